"""Enroll, connect, challenge, decide: the path every login takes."""

from __future__ import annotations

import pytest
import trio

from engine.protocol.device import ChallengeFrame, Closed, Error, Result
from tests.conftest import enrolled_phone

pytestmark = pytest.mark.trio

LOGIN = {"kind": "login", "name": "User Portal"}
CONTEXT = {"app": "User Portal", "ip": "203.0.113.7", "location": "Boulder, CO", "user_agent": "Firefox"}


async def test_approve_reports_decision_and_delivery_times(node, rpc):
    async with trio.open_nursery() as nursery:
        phone = await enrolled_phone(node, rpc, nursery, "alice")
        created = await rpc.call("challenge.create", "alice", LOGIN, CONTEXT, {})
        frame = await phone.expect(ChallengeFrame)
        assert frame.id == created["challenge_id"]
        assert frame.context.location == "Boulder, CO"
        await phone.ack(frame.id, shown=True)
        answer = await phone.respond(frame, "approve")
        assert answer == Result(id=frame.id, status="approved")
        result = await rpc.call("challenge.wait", frame.id, 5)
        assert result["status"] == "approved"
        assert result["biometric"] is True
        delivery = result["delivery"]
        assert delivery["channel"] == "websocket"
        assert delivery["sent_at"] <= delivery["delivered_at"] <= delivery["shown_at"] <= result["decided_at"]
        await phone.close()


async def test_deny(node, rpc):
    async with trio.open_nursery() as nursery:
        phone = await enrolled_phone(node, rpc, nursery, "bob", encoding="json")
        created = await rpc.call("challenge.create", "bob", LOGIN, CONTEXT)
        frame = await phone.expect(ChallengeFrame)
        async with trio.open_nursery() as waiters:
            results = []

            async def wait() -> None:
                results.append(await rpc.call("challenge.wait", created["challenge_id"], 5))

            waiters.start_soon(wait)
            await trio.sleep(0.05)
            assert await phone.respond(frame, "deny") == Result(id=frame.id, status="denied")
        assert results[0]["status"] == "denied"
        assert await phone.expect(Closed) == Closed(id=frame.id, status="denied")
        await phone.close()


async def test_timeout_expires_and_late_answer_gets_expired(node, rpc):
    async with trio.open_nursery() as nursery:
        phone = await enrolled_phone(node, rpc, nursery, "carol")
        created = await rpc.call("challenge.create", "carol", LOGIN, CONTEXT, {"ttl_s": 1})
        frame = await phone.expect(ChallengeFrame)
        result = await rpc.call("challenge.wait", created["challenge_id"], 5)
        assert result["status"] == "expired"
        assert await phone.expect(Closed) == Closed(id=frame.id, status="expired")
        answer = await phone.respond(frame, "approve")
        assert isinstance(answer, Error) and answer.code == "expired"
        await phone.close()
