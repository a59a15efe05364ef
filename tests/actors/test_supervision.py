"""Device actors: crashes are contained and restarted; idle actors passivate."""

from __future__ import annotations

import dataclasses

import pytest
import trio

from actors.device_actor import DeviceActor
from actors.messages import Deliver
from engine.node import open_node
from engine.protocol.device import ChallengeFrame
from engine.rpc_client import RpcClient
from tests.conftest import enrolled_phone, operator_key

pytestmark = pytest.mark.trio

LOGIN = {"kind": "login", "name": "portal"}


async def test_injected_crash_is_restarted_and_other_devices_keep_working(node, rpc, monkeypatch):
    async with trio.open_nursery() as nursery:
        victim = await enrolled_phone(node, rpc, nursery, "victim")
        bystander = await enrolled_phone(node, rpc, nursery, "bystander")
        original = DeviceActor.handle
        crashes = []

        async def faulty(self, message):
            if self.device_id == victim.device_id and isinstance(message, Deliver) and not crashes:
                crashes.append(message)
                raise RuntimeError("injected fault")
            await original(self, message)

        monkeypatch.setattr(DeviceActor, "handle", faulty)
        created = await rpc.call("challenge.create", "victim", LOGIN, {})
        # The crashed actor's phone is hung up on with 1011 ...
        assert await victim.wait_closed() == 1011
        # ... while the other phone is untouched and keeps working.
        await rpc.call("challenge.create", "bystander", LOGIN, {})
        frame = await bystander.expect(ChallengeFrame)
        assert (await bystander.respond(frame, "approve")).status == "approved"
        # The victim reconnects to a restarted actor and finds its challenge.
        welcome = await victim.connect_with_backoff()
        assert [f.id for f in welcome.pending] == [created["challenge_id"]]
        assert (await victim.respond(welcome.pending[0], "approve")).status == "approved"
        stats = await rpc.call("stats.get")
        assert stats["counters"]["actor_crashes"] == 1
        assert stats["counters"]["actor_restarts"] == 1
        await victim.close()
        await bystander.close()


async def test_crash_loop_exhausts_the_restart_budget_without_touching_the_node(config, monkeypatch):
    config = dataclasses.replace(config, actor_restarts=2, actor_restart_period_s=60)
    async with open_node(config) as node, trio.open_nursery() as nursery:
        async with RpcClient.connect("127.0.0.1", node.rpc_port, api_key=operator_key(node)) as rpc:
            victim = await enrolled_phone(node, rpc, nursery, "loop")
            original = DeviceActor.handle

            async def always_failing(self, message):
                if self.device_id == victim.device_id and isinstance(message, Deliver):
                    raise RuntimeError("injected fault")
                await original(self, message)

            monkeypatch.setattr(DeviceActor, "handle", always_failing)
            for name in ("a", "b", "c"):
                await rpc.call("challenge.create", "loop", {"kind": "login", "name": name}, {})
            with trio.fail_after(5):
                while node.stats.counters["actor_escalations"] < 1:
                    await trio.sleep(0.01)
            assert node.stats.counters["actor_crashes"] == 3
            assert not node.registry.is_active(victim.device_id)
            # Still serving: the node answers, and the challenges are in the store.
            assert (await rpc.call("stats.get"))["counters"]["actor_restarts"] == 2
            monkeypatch.setattr(DeviceActor, "handle", original)
            welcome = await victim.connect_with_backoff()
            assert len(welcome.pending) == 3
            await victim.close()


async def test_idle_disconnected_actor_passivates_and_reactivates_on_demand(config):
    config = dataclasses.replace(config, actor_idle_s=0.2)
    async with open_node(config) as node, trio.open_nursery() as nursery:
        async with RpcClient.connect("127.0.0.1", node.rpc_port, api_key=operator_key(node)) as rpc:
            phone = await enrolled_phone(node, rpc, nursery, "idle")
            assert node.registry.is_active(phone.device_id)
            await phone.close()
            with trio.fail_after(5):
                while node.registry.is_active(phone.device_id):
                    await trio.sleep(0.05)
            assert node.registry.active_count == 0
            created = await rpc.call("challenge.create", "idle", LOGIN, {})
            assert node.registry.is_active(phone.device_id)
            welcome = await phone.connect_with_backoff()
            assert [f.id for f in welcome.pending] == [created["challenge_id"]]
            await phone.close()
