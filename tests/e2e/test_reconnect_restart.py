"""A phone that drops and a node that restarts lose nothing."""

from __future__ import annotations

import pytest
import trio

from engine.node import open_node
from engine.protocol.device import ChallengeFrame, Result
from engine.rpc_client import RpcClient
from simulator.device import SimPhone
from tests.conftest import enrolled_phone, operator_key, ws_url

pytestmark = pytest.mark.trio

LOGIN = {"kind": "login", "name": "User Portal"}


async def test_phone_reconnects_and_finds_open_challenge(node, rpc):
    async with trio.open_nursery() as nursery:
        phone = await enrolled_phone(node, rpc, nursery, "pat")
        created = await rpc.call("challenge.create", "pat", LOGIN, {"ip": "198.51.100.4"})
        await phone.expect(ChallengeFrame)
        await phone.close()  # the phone loses its network before answering
        welcome = await phone.connect_with_backoff()
        assert [frame.id for frame in welcome.pending] == [created["challenge_id"]]
        answer = await phone.respond(welcome.pending[0], "approve")
        assert answer == Result(id=created["challenge_id"], status="approved")
        assert (await rpc.call("challenge.wait", created["challenge_id"], 5))["status"] == "approved"
        await phone.close()


async def test_offline_phone_gets_challenge_on_connect_and_push_fallback_is_recorded(node, rpc):
    async with trio.open_nursery() as nursery:
        phone = await enrolled_phone(node, rpc, nursery, "quin")
        await phone.close()
        await trio.sleep(0.05)
        created = await rpc.call("challenge.create", "quin", LOGIN, {})
        await trio.sleep(0.05)
        view = await rpc.call("challenge.get", created["challenge_id"])
        assert view["delivery"]["channel"] == "recording"
        assert node.push.attempts[-1].challenge_id == created["challenge_id"]
        welcome = await phone.connect_with_backoff()
        assert [frame.id for frame in welcome.pending] == [created["challenge_id"]]
        await phone.close()


async def test_restart_between_enrollment_and_challenge_and_after_decision(config):
    async with trio.open_nursery() as nursery:
        async with open_node(config) as node:
            key = operator_key(node)
            async with RpcClient.connect("127.0.0.1", node.rpc_port, api_key=key) as rpc:
                started = await rpc.call("push.begin_enrollment", "rae")
            phone = SimPhone(ws_url(node), nursery)
            await phone.enroll(started["uri"])
            await phone.close()

        async with open_node(config) as node:  # same data dir: a restart
            async with RpcClient.connect("127.0.0.1", node.rpc_port, api_key=key) as rpc:
                phone.url = ws_url(node)
                await phone.connect_with_backoff()
                created = await rpc.call("challenge.create", "rae", LOGIN, {})
                frame = await phone.expect(ChallengeFrame)
                await phone.respond(frame, "deny")
                await phone.close()

        async with open_node(config) as node:
            async with RpcClient.connect("127.0.0.1", node.rpc_port, api_key=key) as rpc:
                result = await rpc.call("challenge.get", created["challenge_id"])
                assert result["status"] == "denied"
                audit = await rpc.call("audit.query", {"challenge_id": created["challenge_id"]})
                assert [r["kind"] for r in audit] == ["challenge.created", "challenge.decided"]


async def test_open_challenge_survives_restart_and_is_redelivered(config):
    async with trio.open_nursery() as nursery:
        async with open_node(config) as node:
            key = operator_key(node)
            async with RpcClient.connect("127.0.0.1", node.rpc_port, api_key=key) as rpc:
                started = await rpc.call("push.begin_enrollment", "sam")
                phone = SimPhone(ws_url(node), nursery)
                await phone.enroll(started["uri"])
                await phone.hello()
                created = await rpc.call("challenge.create", "sam", LOGIN, {}, {"ttl_s": 30})
                await phone.expect(ChallengeFrame)
            await phone.close()

        async with open_node(config) as node:
            phone.url = ws_url(node)
            welcome = await phone.connect_with_backoff()
            assert [frame.id for frame in welcome.pending] == [created["challenge_id"]]
            answer = await phone.respond(welcome.pending[0], "approve")
            assert answer.status == "approved"
            await phone.close()


async def test_challenge_that_expired_while_node_was_down_is_expired_on_start(config):
    async with trio.open_nursery() as nursery:
        async with open_node(config) as node:
            key = operator_key(node)
            async with RpcClient.connect("127.0.0.1", node.rpc_port, api_key=key) as rpc:
                started = await rpc.call("push.begin_enrollment", "tia")
                phone = SimPhone(ws_url(node), nursery)
                await phone.enroll(started["uri"])
                await phone.close()
                created = await rpc.call("challenge.create", "tia", LOGIN, {}, {"ttl_s": 1})
        await trio.sleep(1.1)
        async with open_node(config) as node:
            async with RpcClient.connect("127.0.0.1", node.rpc_port, api_key=key) as rpc:
                result = await rpc.call("challenge.wait", created["challenge_id"], 5)
                assert result["status"] == "expired"


async def test_more_pending_than_one_welcome_holds_follow_it_one_by_one(node, rpc):
    await rpc.call("policy.set", {"max_per_user_per_hour": 100})
    wide = "\U0001d11e" * 256  # 4 bytes of UTF-8 a character: the largest fields a backend may send
    context = {"app": wide, "ip": "203.0.113.9", "location": wide, "user_agent": wide}
    async with trio.open_nursery() as nursery:
        phone = await enrolled_phone(node, rpc, nursery, "rex")
        await phone.close()
        created = [
            (await rpc.call("challenge.create", "rex", {"kind": "login", "name": f"{i:03d}" + wide[:200]},
                            context))["challenge_id"]
            for i in range(20)
        ]
        welcome = await phone.connect_with_backoff()
        # Twenty such challenges are over the 64 KiB frame limit: the welcome
        # comes empty and every challenge follows in its own frame.
        assert welcome.pending == ()
        frames = [await phone.expect(ChallengeFrame) for _ in created]
        assert [f.id for f in frames] == created
        assert (await phone.respond(frames[-1], "approve")).status == "approved"
        await phone.close()
