"""Forged, replayed and stale answers are refused; roles are enforced."""

from __future__ import annotations

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from engine.protocol.device import ChallengeFrame, Error, Respond, Result
from engine.rpc_client import RemoteError, RpcClient
from simulator.device import PhoneRejected
from tests.conftest import enrolled_phone

pytestmark = pytest.mark.trio

LOGIN = {"kind": "login", "name": "User Portal"}


async def open_challenge(rpc, phone, user, opts=None):
    created = await rpc.call("challenge.create", user, LOGIN, {"app": "User Portal"}, opts or {})
    frame = await phone.expect(ChallengeFrame)
    return created, frame


async def test_answer_signed_with_another_key_is_refused(node, rpc):
    async with trio.open_nursery() as nursery:
        phone = await enrolled_phone(node, rpc, nursery, "uma")
        _, frame = await open_challenge(rpc, phone, "uma")
        answer = await phone.respond(frame, "approve", key=Ed25519PrivateKey.generate())
        assert isinstance(answer, Error) and answer.code == "bad_signature"
        assert (await rpc.call("challenge.get", frame.id))["status"] == "pending"
        await phone.close()


async def test_replayed_answer_is_refused(node, rpc):
    async with trio.open_nursery() as nursery:
        phone = await enrolled_phone(node, rpc, nursery, "val")
        _, frame = await open_challenge(rpc, phone, "val")
        token = phone.respond_token(frame, "deny")
        await phone.send(Respond(token=token))
        assert await phone.answer_for(frame.id) == Result(id=frame.id, status="denied")
        await phone.send(Respond(token=token))
        replay = await phone.answer_for(frame.id)
        assert isinstance(replay, Error) and replay.code == "bad_signature"
        # A fresh token for a decided challenge is told so.
        again = await phone.respond(frame, "approve")
        assert isinstance(again, Error) and again.code == "already_decided"
        await phone.close()


async def test_reused_hello_jti_and_stale_hello_are_refused(node, rpc):
    async with trio.open_nursery() as nursery:
        phone = await enrolled_phone(node, rpc, nursery, "wes")
        await phone.close()
        token = phone.hello_token(jti="fixed-jti")
        await phone.connect()
        await phone.hello(token)
        await phone.close()
        await phone.connect()
        with pytest.raises(PhoneRejected) as caught:
            await phone.hello(token)
        assert caught.value.error.code == "auth_failed"
        assert await phone.wait_closed() == 4401
        for stale in (phone.hello_token(skew_s=-90), phone.hello_token(skew_s=90),
                      phone.hello_token(lifetime_s=600), phone.hello_token(audience="someone-else")):
            await phone.connect()
            with pytest.raises(PhoneRejected):
                await phone.hello(stale)
            assert await phone.wait_closed() == 4401


async def test_context_mismatch_is_refused_and_challenge_stays_open(node, rpc):
    async with trio.open_nursery() as nursery:
        phone = await enrolled_phone(node, rpc, nursery, "xia")
        _, frame = await open_challenge(rpc, phone, "xia")
        answer = await phone.respond(frame, "approve", ctx="not-what-the-node-sent")
        assert isinstance(answer, Error) and answer.code == "context_mismatch"
        assert (await rpc.call("challenge.get", frame.id))["status"] == "pending"
        assert (await phone.respond(frame, "approve")).status == "approved"
        await phone.close()


@pytest.mark.parametrize("mode", ["type", "choose"])
async def test_number_matching(node, rpc, mode):
    async with trio.open_nursery() as nursery:
        phone = await enrolled_phone(node, rpc, nursery, f"yan-{mode}")
        created, frame = await open_challenge(rpc, phone, f"yan-{mode}", {"match": mode})
        code = created["code"]
        assert frame.match == mode
        if mode == "choose":
            assert code in frame.choices and len(frame.choices) == 3
        else:
            assert frame.choices is None and len(code) == 2
        wrong = next(c for c in ("00", "01", "02") if c != code)
        answer = await phone.respond(frame, "approve", code=wrong)
        assert isinstance(answer, Error) and answer.code == "match_failed"
        assert (await rpc.call("challenge.get", frame.id))["status"] == "denied"

        await rpc.call("guard.clear", f"yan-{mode}")
        created, frame = await open_challenge(rpc, phone, f"yan-{mode}", {"match": mode})
        answer = await phone.respond(frame, "approve", code=created["code"])
        assert answer == Result(id=frame.id, status="approved")
        await phone.close()


async def test_type_match_digits_follow_policy(node, rpc):
    await rpc.call("policy.set", {"match": "type", "match_digits": 6})
    async with trio.open_nursery() as nursery:
        phone = await enrolled_phone(node, rpc, nursery, "yul")
        created, frame = await open_challenge(rpc, phone, "yul")
        assert frame.match == "type" and len(created["code"]) == 6
        await phone.close()


async def test_missing_biometric_keeps_challenge_open(node, rpc):
    async with trio.open_nursery() as nursery:
        phone = await enrolled_phone(node, rpc, nursery, "zed")
        _, frame = await open_challenge(rpc, phone, "zed", {"require_biometric": True})
        assert frame.require_biometric is True
        answer = await phone.respond(frame, "approve", biometric=False)
        assert isinstance(answer, Error) and answer.code == "biometric_required"
        assert (await rpc.call("challenge.get", frame.id))["status"] == "pending"
        assert (await phone.respond(frame, "approve", biometric=True)).status == "approved"
        await phone.close()


async def test_answer_for_another_devices_challenge_is_unknown(node, rpc):
    async with trio.open_nursery() as nursery:
        alice = await enrolled_phone(node, rpc, nursery, "amy")
        mallory = await enrolled_phone(node, rpc, nursery, "mal")
        _, frame = await open_challenge(rpc, alice, "amy")
        answer = await mallory.respond(frame, "approve")
        assert isinstance(answer, Error) and answer.code == "unknown_challenge"
        await alice.close()
        await mallory.close()


async def test_roles_and_authentication_on_rpc(node, rpc):
    backend_key = "backend-key-for-tests"
    node.api_keys[backend_key] = "backend"
    async with RpcClient.connect("127.0.0.1", node.rpc_port) as anonymous:
        with pytest.raises(RemoteError) as caught:
            await anonymous.call("policy.get")
        assert caught.value.code == "unauthenticated"
        with pytest.raises(RemoteError) as caught:
            await anonymous.call("auth", "wrong key")
        assert caught.value.code == "unauthenticated"
    async with RpcClient.connect("127.0.0.1", node.rpc_port, api_key=backend_key) as backend:
        assert backend.role == "backend"
        for method, params in (("policy.set", [{"max_open_per_resource": 5}]), ("guard.clear", ["amy"]),
                               ("audit.query", [{}])):
            with pytest.raises(RemoteError) as caught:
                await backend.call(method, *params)
            assert caught.value.code == "forbidden"
        assert (await backend.call("policy.get"))["max_open_per_resource"] == 1
    with pytest.raises(RemoteError) as caught:
        await rpc.call("policy.set", {"max_open_per_resource": "many"})
    assert caught.value.code == "invalid_params"
    with pytest.raises(RemoteError) as caught:
        await rpc.call("no.such.method")
    assert caught.value.code == "unknown_method"
    with pytest.raises(RemoteError) as caught:
        await rpc.call("challenge.create", "amy")
    assert caught.value.code == "invalid_params"


async def test_a_context_the_phone_could_not_show_is_refused_at_create(node, rpc):
    async with trio.open_nursery() as nursery:
        phone = await enrolled_phone(node, rpc, nursery, "uma")
        with pytest.raises(RemoteError) as caught:
            await rpc.call("challenge.create", "uma", LOGIN, {"ip": "1" * 65})
        assert caught.value.code == "invalid_params"
        # The phone was never sent a frame it could not take, and still works.
        await rpc.call("challenge.create", "uma", LOGIN, {"ip": "192.0.2.1"})
        assert (await phone.expect(ChallengeFrame)).context.ip == "192.0.2.1"
        await phone.close()
