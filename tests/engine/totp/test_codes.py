"""TOTP codes without a node: RFC 6238 Appendix B, the drift window, odd input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.totp.codes import (
    TotpAlgorithm,
    TotpParams,
    base32_secret,
    code_at_step,
    matching_step,
    new_secret,
    otpauth_uri,
    time_step,
)

# RFC 6238 Appendix B: the seeds are ASCII digits repeated to the hash's length.
RFC_SECRETS = {
    TotpAlgorithm.SHA1: b"12345678901234567890",
    TotpAlgorithm.SHA256: b"12345678901234567890123456789012",
    TotpAlgorithm.SHA512: b"1234567890123456789012345678901234567890123456789012345678901234",
}
RFC_VECTORS = [  # (unix time, {algorithm: 8-digit code})
    (59, {"SHA1": "94287082", "SHA256": "46119246", "SHA512": "90693936"}),
    (1111111109, {"SHA1": "07081804", "SHA256": "68084774", "SHA512": "25091201"}),
    (1111111111, {"SHA1": "14050471", "SHA256": "67062674", "SHA512": "99943326"}),
    (1234567890, {"SHA1": "89005924", "SHA256": "91819424", "SHA512": "93441116"}),
    (2000000000, {"SHA1": "69279037", "SHA256": "90698825", "SHA512": "38618901"}),
    (20000000000, {"SHA1": "65353130", "SHA256": "77737706", "SHA512": "47863826"}),
]


@pytest.mark.parametrize("unix_s, expected", RFC_VECTORS)
@pytest.mark.parametrize("algorithm", list(TotpAlgorithm))
def test_rfc6238_appendix_b(unix_s, expected, algorithm):
    params = TotpParams(digits=8, algorithm=algorithm)
    secret = RFC_SECRETS[algorithm]
    assert code_at_step(secret, params, time_step(unix_s, 30)) == expected[algorithm]
    assert matching_step(secret, params, expected[algorithm], unix_s, 0) == time_step(unix_s, 30)


def test_drift_window_is_exactly_the_configured_steps():
    secret, params = RFC_SECRETS[TotpAlgorithm.SHA1], TotpParams()
    now = 1_700_000_015
    step = time_step(now, 30)
    for offset in (-1, 0, 1):
        assert matching_step(secret, params, code_at_step(secret, params, step + offset), now, 1) == step + offset
    for offset in (-2, 2):
        code = code_at_step(secret, params, step + offset)
        if all(code != code_at_step(secret, params, step + d) for d in (-1, 0, 1)):
            assert matching_step(secret, params, code, now, 1) is None
    assert matching_step(secret, params, code_at_step(secret, params, step + 1), now, 0) is None


def test_whitespace_inside_a_code_is_ignored():
    secret, params = new_secret(TotpAlgorithm.SHA1), TotpParams()
    code = code_at_step(secret, params, time_step(1_700_000_000, 30))
    assert matching_step(secret, params, f" {code[:3]} {code[3:]}\n", 1_700_000_000, 0) is not None


@given(st.text(max_size=200))
def test_no_input_crashes_matching_and_odd_input_never_matches(text):
    secret, params = RFC_SECRETS[TotpAlgorithm.SHA1], TotpParams()
    step = matching_step(secret, params, text, 1_700_000_000, 1)
    if step is not None:
        assert "".join(text.split()) == code_at_step(secret, params, step)


def test_secrets_are_as_long_as_the_hash_and_fresh():
    for algorithm in TotpAlgorithm:
        assert len(new_secret(algorithm)) == algorithm.secret_bytes >= 20
    assert new_secret(TotpAlgorithm.SHA1) != new_secret(TotpAlgorithm.SHA1)


@pytest.mark.parametrize("bad", [{"digits": 7}, {"digits": 6.0}, {"digits": True}, {"period": 10},
                                 {"period": 30.5}, {"algorithm": "MD5"}])
def test_params_are_validated(bad):
    with pytest.raises(ValueError):
        TotpParams(**bad)


def test_otpauth_uri_follows_the_key_uri_format():
    secret = RFC_SECRETS[TotpAlgorithm.SHA256]
    uri = otpauth_uri(secret, TotpParams(digits=8, algorithm=TotpAlgorithm.SHA256),
                      issuer="Acme Corp", label="alice@example.com")
    assert uri.startswith("otpauth://totp/Acme%20Corp:alice%40example.com?")
    assert f"secret={base32_secret(secret)}" in uri
    assert "issuer=Acme%20Corp" in uri and "algorithm=SHA256" in uri and "digits=8" in uri
    assert "=" not in base32_secret(secret)
