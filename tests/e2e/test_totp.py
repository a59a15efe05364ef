"""TOTP through a real node over msgpack-RPC: vectors, replay, drift, lockout, reset, restart."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
import trio

from engine.clock import Clock, TrioAnchoredClock
from engine.config import Config
from engine.node import open_node
from engine.rpc_client import RemoteError, RpcClient
from engine.totp import codes
from engine.totp.codes import TotpAlgorithm, base32_secret
from simulator.authenticator import Authenticator
from tests.conftest import rpc_client
from tests.engine.totp.test_codes import RFC_SECRETS, RFC_VECTORS

pytestmark = pytest.mark.trio

T0_MS = 1_700_000_010_000  # 10 s into a 30 s step
REJECTED = {"valid": False, "reason": "rejected"}


class SettableClock(Clock):
    """The node's wall clock, set by the test."""

    def __init__(self, now_ms: int):
        self.ms = now_ms

    def now_ms(self) -> int:
        return self.ms

    def trio_deadline(self, wall_ms: int) -> float:
        return trio.current_time() + (wall_ms - self.ms) / 1000


async def enroll(rpc: RpcClient, user_id: str, clock: Clock, **opts) -> Authenticator:
    """Enroll and confirm through the API; the returned app holds the account."""
    app = Authenticator(now=lambda: clock.now_ms() / 1000)
    started = await rpc.call("totp.begin_enrollment", user_id, opts)
    app.scan(started["otpauth_uri"])
    assert await rpc.call("totp.confirm", user_id, app.code(user_id)) == {"confirmed": True}
    return app


def step_code(app: Authenticator, user_id: str, offset: int) -> str:
    return app.code(user_id, offset_steps=offset)


async def audit_reasons(rpc: RpcClient, user_id: str) -> list[str]:
    return [r["detail"]["reason"] for r in await rpc.call("audit.query", {"user_id": user_id, "kind": "totp.failed"})]


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock(T0_MS)


@pytest.fixture
async def totp_node(config: Config, clock: SettableClock):
    async with open_node(config, clock=clock) as node:
        yield node


@pytest.fixture
async def totp_rpc(totp_node):
    async with rpc_client(totp_node) as client:
        yield client


@pytest.mark.parametrize("algorithm", list(TotpAlgorithm))
async def test_rfc6238_vectors_through_verify(totp_rpc, clock, monkeypatch, algorithm):
    # The node draws the RFC's seed instead of a random secret; all else is the real path.
    monkeypatch.setattr(codes, "new_secret", lambda alg: RFC_SECRETS[TotpAlgorithm(alg)])
    (first_s, first), *rest = RFC_VECTORS
    clock.ms = first_s * 1000
    started = await totp_rpc.call("totp.begin_enrollment", "rfc", {"digits": 8, "algorithm": str(algorithm)})
    assert started["secret"] == base32_secret(RFC_SECRETS[algorithm])
    assert f"algorithm={algorithm}" in started["otpauth_uri"] or algorithm is TotpAlgorithm.SHA1
    assert await totp_rpc.call("totp.confirm", "rfc", first[str(algorithm)]) == {"confirmed": True}
    for unix_s, expected in rest:
        clock.ms = unix_s * 1000
        assert await totp_rpc.call("totp.verify", "rfc", expected[str(algorithm)]) == {"valid": True}


async def test_a_code_is_accepted_once_and_earlier_steps_never_again(totp_rpc, clock):
    app = await enroll(totp_rpc, "ada", clock)
    clock.ms += 30_000
    code = app.code("ada")
    assert await totp_rpc.call("totp.verify", "ada", code) == {"valid": True}
    assert await totp_rpc.call("totp.verify", "ada", code) == REJECTED  # same step again
    # The previous step's code is inside the drift window but older than the one used.
    assert await totp_rpc.call("totp.verify", "ada", step_code(app, "ada", -1)) == REJECTED
    assert await totp_rpc.call("totp.verify", "ada", step_code(app, "ada", 1)) == {"valid": True}
    assert await totp_rpc.call("totp.verify", "ada", code) == REJECTED  # earlier than the last used
    assert await audit_reasons(totp_rpc, "ada") == ["replayed", "replayed", "replayed"]


async def test_one_step_of_drift_is_accepted_two_are_not(totp_rpc, clock):
    app = await enroll(totp_rpc, "bea", clock)
    clock.ms += 10 * 30_000
    assert await totp_rpc.call("totp.verify", "bea", step_code(app, "bea", -2)) == REJECTED
    assert await totp_rpc.call("totp.verify", "bea", step_code(app, "bea", -1)) == {"valid": True}
    clock.ms += 10 * 30_000
    assert await totp_rpc.call("totp.verify", "bea", step_code(app, "bea", 2)) == REJECTED
    assert await totp_rpc.call("totp.verify", "bea", step_code(app, "bea", 1)) == {"valid": True}
    # The window is the operator's to set.
    await totp_rpc.call("policy.set", {"totp_drift_steps": 2})
    clock.ms += 10 * 30_000
    assert await totp_rpc.call("totp.verify", "bea", step_code(app, "bea", 2)) == {"valid": True}


async def test_concurrent_verifications_of_one_code_accept_it_once(totp_rpc, clock):
    app = await enroll(totp_rpc, "cy", clock)
    clock.ms += 30_000
    code, answers = app.code("cy"), []

    async def verify() -> None:
        answers.append(await totp_rpc.call("totp.verify", "cy", code))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(verify)
    assert answers.count({"valid": True}) == 1 and answers.count(REJECTED) == 9


async def test_lockout_backs_off_doubling_and_a_success_resets_it(config, mock_clock):
    clock = TrioAnchoredClock(T0_MS)
    async with open_node(config, clock=clock) as node, rpc_client(node) as rpc:
        app = await enroll(rpc, "dee", clock)
        mock_clock.jump(30)
        for _ in range(5):
            assert await rpc.call("totp.verify", "dee", "000000" if app.code("dee") != "000000" else "111111") \
                == REJECTED
        status = await rpc.call("totp.status", "dee")
        assert status["failures"] == 5 and status["locked_until"] == clock.now_ms() + 30_000
        # Locked: even the right code is refused, and the refusal is not counted.
        assert await rpc.call("totp.verify", "dee", app.code("dee")) == REJECTED
        mock_clock.jump(29)
        assert await rpc.call("totp.verify", "dee", app.code("dee")) == REJECTED
        assert (await rpc.call("totp.status", "dee"))["failures"] == 5
        mock_clock.jump(2)
        # Each failure past the limit doubles the lockout: 60 s, then 120 s.
        assert await rpc.call("totp.verify", "dee", "12345678") == REJECTED
        assert (await rpc.call("totp.status", "dee"))["locked_until"] == clock.now_ms() + 60_000
        mock_clock.jump(61)
        assert await rpc.call("totp.verify", "dee", "12345678") == REJECTED
        assert (await rpc.call("totp.status", "dee"))["locked_until"] == clock.now_ms() + 120_000
        mock_clock.jump(121)
        assert await rpc.call("totp.verify", "dee", app.code("dee")) == {"valid": True}
        status = await rpc.call("totp.status", "dee")
        assert (status["failures"], status["locked_until"]) == (0, None)
        assert await audit_reasons(rpc, "dee") == ["wrong_code"] * 5 + ["locked", "locked"] + ["wrong_code"] * 2
        locks = await rpc.call("audit.query", {"user_id": "dee", "kind": "totp.locked"})
        assert [r["detail"]["lock_s"] for r in locks] == [30, 60, 120]


async def test_lockout_is_capped_at_an_hour_and_a_new_enrollment_does_not_reset_it(config, mock_clock):
    clock = TrioAnchoredClock(T0_MS)
    async with open_node(config, clock=clock) as node, rpc_client(node) as rpc:
        app = await enroll(rpc, "eve", clock)
        locks = []
        for _ in range(12):
            await rpc.call("totp.verify", "eve", "bad")
            status = await rpc.call("totp.status", "eve")
            if status["locked_until"] is not None:
                locks.append((status["locked_until"] - clock.now_ms()) // 1000)
                mock_clock.jump(locks[-1] + 1)
        assert locks == [30, 60, 120, 240, 480, 960, 1920, 3600]
        # Neither removing the secret nor enrolling a new one resets the count:
        # the next failure locks for the full hour at once.
        await rpc.call("totp.remove", "eve")
        started = await rpc.call("totp.begin_enrollment", "eve", {})
        assert (await rpc.call("totp.status", "eve"))["failures"] == 12
        with pytest.raises(RemoteError):
            await rpc.call("totp.confirm", "eve", "bad")
        assert (await rpc.call("totp.status", "eve"))["locked_until"] == clock.now_ms() + 3_600_000
        app.scan(started["otpauth_uri"])
        with pytest.raises(RemoteError):  # locked: not even the right code confirms
            await rpc.call("totp.confirm", "eve", app.code("eve"))


async def test_failures_answer_in_one_shape_with_the_reason_only_in_the_audit(totp_rpc, clock):
    app = await enroll(totp_rpc, "fay", clock)
    await totp_rpc.call("policy.set", {"totp_max_failures": 1})
    clock.ms += 60_000
    answers = [
        await totp_rpc.call("totp.verify", "nobody", "123456"),  # unknown user
        await totp_rpc.call("totp.verify", "fay", step_code(app, "fay", -2)),  # wrong code: locks (limit 1)
        await totp_rpc.call("totp.verify", "fay", app.code("fay")),  # locked
        await totp_rpc.call("totp.verify", "fay", "x" * 10_000),  # garbage
    ]
    assert answers == [REJECTED] * 4
    assert await audit_reasons(totp_rpc, "nobody") == ["not_enrolled"]
    assert await audit_reasons(totp_rpc, "fay") == ["wrong_code", "locked", "locked"]
    with pytest.raises(RemoteError) as caught:
        await totp_rpc.call("totp.verify", "fay", 123456)
    assert caught.value.code == "invalid_params"


async def test_reset_needs_a_current_code_and_the_old_secret_lasts_until_confirmed(totp_rpc, clock):
    old_app = await enroll(totp_rpc, "gus", clock)
    clock.ms += 30_000
    with pytest.raises(RemoteError) as caught:
        await totp_rpc.call("totp.reset", "gus", "000000" if old_app.code("gus") != "000000" else "111111")
    assert caught.value.code == "totp_rejected"
    fresh = await totp_rpc.call("totp.reset", "gus", old_app.code("gus"))
    new_app = Authenticator(now=lambda: clock.now_ms() / 1000)
    new_app.scan(fresh["otpauth_uri"])
    assert fresh["secret"] != (await totp_rpc.call("totp.status", "gus")).get("secret")
    # Until the new secret is confirmed the old app still logs in, the new one does not.
    clock.ms += 30_000
    assert await totp_rpc.call("totp.verify", "gus", new_app.code("gus")) == REJECTED
    assert await totp_rpc.call("totp.verify", "gus", old_app.code("gus")) == {"valid": True}
    clock.ms += 30_000
    assert await totp_rpc.call("totp.confirm", "gus", new_app.code("gus")) == {"confirmed": True}
    clock.ms += 30_000
    assert await totp_rpc.call("totp.verify", "gus", old_app.code("gus")) == REJECTED
    assert await totp_rpc.call("totp.verify", "gus", new_app.code("gus")) == {"valid": True}
    kinds = [r["kind"] for r in await totp_rpc.call("audit.query", {"user_id": "gus", "kind": "totp."})]
    assert kinds == ["totp.enrollment_started", "totp.confirmed", "totp.failed", "totp.verified", "totp.reset",
                     "totp.failed", "totp.verified", "totp.confirmed", "totp.failed", "totp.verified"]


async def test_enrollment_options_status_and_what_needs_which_role(config, clock):
    config = dataclasses.replace(config, api_keys={"op-key": "operator", "be-key": "backend"})
    async with open_node(config, clock=clock) as node, \
            RpcClient.connect("127.0.0.1", node.rpc_port, api_key="be-key") as backend:
        assert (await backend.call("totp.status", "hal"))["enrolled"] is False
        started = await backend.call("totp.begin_enrollment", "hal", {
            "issuer": "Acme", "label": "hal@acme.example", "digits": 8, "period": 60, "algorithm": "sha512"})
        assert started["otpauth_uri"].startswith("otpauth://totp/Acme:hal%40acme.example?")
        assert "█" in started["qr"] and (started["digits"], started["period"]) == (8, 60)
        status = await backend.call("totp.status", "hal")
        assert (status["enrolled"], status["confirmed"], status["pending"]) == (True, False, True)
        app = Authenticator(now=lambda: clock.now_ms() / 1000)
        app.scan(started["otpauth_uri"])
        # A pending secret is not yet a second factor.
        assert await backend.call("totp.verify", "hal", app.code("hal@acme.example")) == REJECTED
        clock.ms += 60_000
        assert await backend.call("totp.confirm", "hal", app.code("hal@acme.example")) == {"confirmed": True}
        status = await backend.call("totp.status", "hal")
        assert (status["confirmed"], status["digits"], status["period"], status["algorithm"]) == \
            (True, 8, 60, "SHA512")
        with pytest.raises(RemoteError) as caught:
            await backend.call("totp.begin_enrollment", "hal", {})
        assert caught.value.code == "already_enrolled"
        for bad in ({"digits": 7}, {"algorithm": "MD5"}, {"period": 5}, {"issuer": "a:b"}, {"colour": "red"}):
            with pytest.raises(RemoteError) as caught:
                await backend.call("totp.begin_enrollment", "ivy", bad)
            assert caught.value.code == "invalid_params"
        with pytest.raises(RemoteError) as caught:
            await backend.call("totp.remove", "hal")
        assert caught.value.code == "forbidden"
        async with RpcClient.connect("127.0.0.1", node.rpc_port, api_key="op-key") as operator:
            assert await operator.call("totp.remove", "hal") == {"removed": True}
        assert (await backend.call("totp.status", "hal"))["enrolled"] is False


async def test_a_pending_secret_must_be_confirmed_within_the_enrollment_ttl(totp_rpc, clock):
    started = await totp_rpc.call("totp.begin_enrollment", "jo", {})
    app = Authenticator(now=lambda: clock.now_ms() / 1000)
    app.scan(started["otpauth_uri"])
    clock.ms += 601_000
    with pytest.raises(RemoteError) as caught:
        await totp_rpc.call("totp.confirm", "jo", app.code("jo"))
    assert caught.value.code == "totp_rejected"
    assert await audit_reasons(totp_rpc, "jo") == ["pending_expired"]


async def test_restart_keeps_secrets_spent_steps_and_lockouts(config, clock):
    async with open_node(config, clock=clock) as node, rpc_client(node) as rpc:
        app = await enroll(rpc, "kim", clock)
        clock.ms += 30_000
        used = app.code("kim")
        assert await rpc.call("totp.verify", "kim", used) == {"valid": True}
    async with open_node(config, clock=clock) as node, rpc_client(node) as rpc:
        assert await rpc.call("totp.verify", "kim", used) == REJECTED
        assert await audit_reasons(rpc, "kim") == ["replayed"]
        for _ in range(4):
            await rpc.call("totp.verify", "kim", "bad")
        locked_until = (await rpc.call("totp.status", "kim"))["locked_until"]
        assert locked_until == clock.now_ms() + 30_000
    async with open_node(config, clock=clock) as node, rpc_client(node) as rpc:
        assert (await rpc.call("totp.status", "kim"))["locked_until"] == locked_until
        assert await rpc.call("totp.verify", "kim", app.code("kim", offset_steps=1)) == REJECTED
        assert (await audit_reasons(rpc, "kim"))[-1] == "locked"
        clock.ms = locked_until + 1
        assert await rpc.call("totp.verify", "kim", app.code("kim")) == {"valid": True}


async def test_secrets_are_sealed_in_the_database_and_never_logged(config, clock, caplog):
    caplog.set_level(logging.DEBUG)
    async with open_node(config, clock=clock) as node, rpc_client(node) as rpc:
        started = await rpc.call("totp.begin_enrollment", "lee", {})
        app = Authenticator(now=lambda: clock.now_ms() / 1000)
        app.scan(started["otpauth_uri"])
        await rpc.call("totp.confirm", "lee", app.code("lee"))
        await rpc.call("totp.verify", "lee", "bad")
    secret_b32 = started["secret"]
    raw = codes.base64.b32decode(secret_b32 + "=" * (-len(secret_b32) % 8))
    database = b"".join(p.read_bytes() for p in Path(config.data_dir).glob("pushguard.sqlite3*"))
    assert raw not in database and secret_b32.encode() not in database
    assert secret_b32 not in caplog.text and started["otpauth_uri"] not in caplog.text


async def test_totp_events_reach_subscribers(totp_node, totp_rpc, clock):
    async with rpc_client(totp_node) as feed:
        with feed.notifications() as notes:
            await feed.call("events.subscribe", ["totp."])
            app = await enroll(totp_rpc, "max", clock)
            for _ in range(5):
                await totp_rpc.call("totp.verify", "max", "bad")
            kinds = []
            with trio.fail_after(5):
                async for note in notes:
                    kinds.append(note.params[0]["kind"])
                    if kinds[-1] == "totp.locked":
                        break
    assert kinds == ["totp.enrollment_started", "totp.confirmed"] + ["totp.failed"] * 5 + ["totp.locked"]
    assert app.accounts == [("pushguard", "max")]


async def test_a_user_id_that_is_no_label_still_enrolls(totp_rpc, clock):
    user = "corp:" + "x" * 200  # a ':' and longer than a label may be
    started = await totp_rpc.call("totp.begin_enrollment", user, {})
    app = Authenticator(now=lambda: clock.now_ms() / 1000)
    (_, label), = [app.scan(started["otpauth_uri"])]
    assert ":" not in label and len(label) == 128
    assert await totp_rpc.call("totp.confirm", user, app.code(label)) == {"confirmed": True}
