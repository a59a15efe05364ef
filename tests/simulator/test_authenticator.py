"""The simulated authenticator app: accounts from otpauth URIs, codes as the screen shows them."""

from __future__ import annotations

import pytest

from engine.totp.codes import TotpAlgorithm, TotpParams, code_at_step, otpauth_uri, time_step
from simulator.authenticator import Authenticator

SECRET = b"12345678901234567890"


def uri(issuer: str, label: str, **params) -> str:
    return otpauth_uri(SECRET, TotpParams(**params), issuer=issuer, label=label)


def test_accounts_codes_and_seconds_left():
    now = [1111111109.0]
    app = Authenticator(now=lambda: now[0])
    app.scan(uri("pushguard", "alice", digits=8))
    app.scan(uri("GitHub", "alice", period=60, algorithm=TotpAlgorithm.SHA256))
    assert app.accounts == [("pushguard", "alice"), ("GitHub", "alice")]
    assert app.code("alice", "pushguard") == "07081804"
    github = app.code("alice", "GitHub")
    assert github == code_at_step(SECRET, TotpParams(period=60, algorithm=TotpAlgorithm.SHA256),
                                  time_step(now[0], 60))
    seconds = {entry.issuer: entry.seconds_left for entry in app.screen()}
    assert seconds == {"pushguard": 30 - int(1111111109 % 30), "GitHub": 60 - int(1111111109 % 60)}
    assert "0708 1804" in app.render()
    now[0] += 30
    assert app.code("alice", "pushguard") == "14050471"
    assert app.code("alice", "pushguard", offset_steps=-1) == "07081804"


def test_a_label_alone_must_name_one_account():
    app = Authenticator(now=lambda: 59.0)
    app.scan(uri("A", "bob"))
    assert app.code("bob") == app.code("bob", "A")
    app.scan(uri("B", "bob"))
    with pytest.raises(KeyError):
        app.code("bob")
    app.remove("B", "bob")
    assert app.accounts == [("A", "bob")]


def test_rescanning_replaces_the_account_and_other_uris_are_refused():
    app = Authenticator(now=lambda: 59.0)
    app.scan(uri("A", "cy"))
    app.scan(uri("A", "cy", digits=8))
    assert len(app.code("cy")) == 8 and len(app.accounts) == 1
    with pytest.raises(ValueError):
        app.scan("otpauth://hotp/A:cy?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&counter=1")
    with pytest.raises(ValueError):
        app.scan("https://example.com/")


def test_a_skewed_phone_clock_gives_a_neighbouring_step():
    app = Authenticator(now=lambda: 1111111109.0 + 30)
    app.scan(uri("pushguard", "dee", digits=8))
    assert app.code("dee") == "14050471"
