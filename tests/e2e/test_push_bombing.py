"""The push-bombing guard as a backend and a phone see it."""

from __future__ import annotations

import pytest
import trio

from engine.protocol.device import ChallengeFrame
from engine.rpc_client import RemoteError
from simulator.device import SimPhone
from tests.conftest import enrolled_phone

pytestmark = pytest.mark.trio

LOGIN = {"kind": "login", "name": "User Portal"}


async def burst(rpc, user: str, count: int, resource=LOGIN) -> tuple[list[dict], list[RemoteError]]:
    admitted: list[dict] = []
    refused: list[RemoteError] = []

    async def create() -> None:
        try:
            admitted.append(await rpc.call("challenge.create", user, resource, {"app": "User Portal"}))
        except RemoteError as err:
            refused.append(err)

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(create)
    return admitted, refused


async def frames_within(phone: SimPhone, seconds: float) -> list[ChallengeFrame]:
    frames = []
    with trio.move_on_after(seconds):
        while True:
            frames.append(await phone.expect(ChallengeFrame, timeout=seconds))
    return frames


async def test_burst_reaches_phone_once_then_passes_after_decision(node, rpc):
    async with trio.open_nursery() as nursery:
        phone = await enrolled_phone(node, rpc, nursery, "dana")
        admitted, refused = await burst(rpc, "dana", 20)
        assert len(admitted) == 1
        assert len(refused) == 19
        for err in refused:
            assert err.code == "push_limited"
            assert 1 <= err.details["retry_after_s"] <= 60
            assert err.details["open_challenge_id"] == admitted[0]["challenge_id"]
        frames = await frames_within(phone, 0.5)
        assert [f.id for f in frames] == [admitted[0]["challenge_id"]]

        await phone.respond(frames[0], "approve")
        again = await rpc.call("challenge.create", "dana", LOGIN, {})
        assert (await phone.expect(ChallengeFrame)).id == again["challenge_id"]
        stats = await rpc.call("stats.get")
        assert stats["limiter_blocks"] == 19
        blocks = await rpc.call("audit.query", {"user_id": "dana", "kind": "guard.blocked"})
        assert len(blocks) == 19
        await phone.close()


async def test_other_resource_is_not_blocked(node, rpc):
    async with trio.open_nursery() as nursery:
        phone = await enrolled_phone(node, rpc, nursery, "erin")
        await rpc.call("challenge.create", "erin", LOGIN, {})
        await rpc.call("challenge.create", "erin", {"kind": "step_up", "name": "Payroll"}, {})
        assert len(await frames_within(phone, 0.5)) == 2
        await phone.close()


async def test_raising_the_limit_takes_effect_at_once(node, rpc):
    async with trio.open_nursery() as nursery:
        phone = await enrolled_phone(node, rpc, nursery, "frank")
        admitted, _ = await burst(rpc, "frank", 5)
        assert len(admitted) == 1
        policy = await rpc.call("policy.set", {"max_open_per_resource": 3})
        assert policy["max_open_per_resource"] == 3
        assert (await rpc.call("policy.get"))["max_open_per_resource"] == 3
        admitted, refused = await burst(rpc, "frank", 5)
        assert len(admitted) == 2 and len(refused) == 3
        assert len(await frames_within(phone, 0.5)) == 3
        await phone.close()


async def test_hourly_budget_across_resources(node, rpc):
    await rpc.call("policy.set", {"max_per_user_per_hour": 3, "max_open_per_resource": 10})
    async with trio.open_nursery() as nursery:
        phone = await enrolled_phone(node, rpc, nursery, "gina")
        for name in ("a", "b", "c"):
            await rpc.call("challenge.create", "gina", {"kind": "login", "name": name}, {})
        with pytest.raises(RemoteError) as caught:
            await rpc.call("challenge.create", "gina", {"kind": "login", "name": "d"}, {})
        assert caught.value.code == "push_limited"
        assert caught.value.details["reason"] == "hourly_budget"
        assert 3500 <= caught.value.details["retry_after_s"] <= 3600
        await phone.close()
