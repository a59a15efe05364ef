"""Deny streaks and fraud reports suspend push; an operator lifts it."""

from __future__ import annotations

import pytest
import trio

from engine.protocol.device import ChallengeFrame, Result
from engine.rpc_client import RemoteError
from tests.conftest import enrolled_phone, rpc_client

pytestmark = pytest.mark.trio


async def challenge_and_answer(rpc, phone, user, name, decision, **kw):
    await rpc.call("challenge.create", user, {"kind": "login", "name": name}, {})
    frame = await phone.expect(ChallengeFrame)
    return await phone.respond(frame, decision, **kw)


async def test_deny_streak_across_resources_suspends_until_cleared(node, rpc):
    async with trio.open_nursery() as nursery:
        phone = await enrolled_phone(node, rpc, nursery, "hank")
        # One approval between denials breaks the streak; three in a row do not.
        await challenge_and_answer(rpc, phone, "hank", "a", "deny")
        await challenge_and_answer(rpc, phone, "hank", "b", "approve")
        for name in ("c", "d", "e"):
            assert await challenge_and_answer(rpc, phone, "hank", name, "deny") is not None
        with pytest.raises(RemoteError) as caught:
            await rpc.call("challenge.create", "hank", {"kind": "login", "name": "f"}, {})
        assert caught.value.code == "push_suspended"
        assert caught.value.details["reason"] == "deny_streak"
        status = await rpc.call("guard.status", "hank")
        assert status["suspended"] is True

        async with rpc_client(node) as operator:
            assert (await operator.call("guard.clear", "hank"))["cleared"] is True
        answer = await challenge_and_answer(rpc, phone, "hank", "f", "approve")
        assert isinstance(answer, Result) and answer.status == "approved"
        kinds = [r["kind"] for r in await rpc.call("audit.query", {"user_id": "hank", "kind": "guard."})]
        assert kinds.count("guard.suspended") == 1 and "guard.cleared" in kinds
        await phone.close()


async def test_fraud_report_suspends_at_once(node, rpc):
    async with trio.open_nursery() as nursery:
        phone = await enrolled_phone(node, rpc, nursery, "ivy")
        answer = await challenge_and_answer(rpc, phone, "ivy", "a", "approve", fraud=True)
        assert answer == Result(id=answer.id, status="denied")
        result = await rpc.call("challenge.get", answer.id)
        assert result["fraud"] is True and result["status"] == "denied"
        with pytest.raises(RemoteError) as caught:
            await rpc.call("challenge.create", "ivy", {"kind": "login", "name": "b"}, {})
        assert caught.value.code == "push_suspended"
        assert caught.value.details["reason"] == "fraud"
        await phone.close()


async def test_suspension_lasts_suspend_minutes(node, rpc):
    await rpc.call("policy.set", {"suspend_minutes": 5})
    async with trio.open_nursery() as nursery:
        phone = await enrolled_phone(node, rpc, nursery, "jack")
        await challenge_and_answer(rpc, phone, "jack", "a", "deny", fraud=True)
        status = await rpc.call("guard.status", "jack")
        now = node.clock.now_ms()
        assert now + 4 * 60_000 < status["until"] <= now + 5 * 60_000
        await phone.close()
