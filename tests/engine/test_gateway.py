"""Gateway behaviour that needs a peer the simulator will not imitate."""

from __future__ import annotations

import contextlib
import dataclasses
import json

import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Ping, Request, TextMessage

from engine.node import open_node
from engine.rpc_client import RpcClient
from tests.conftest import enrolled_phone, operator_key

pytestmark = pytest.mark.trio


@contextlib.asynccontextmanager
async def enrolled_on_node(config, user_id: str, **changes):  # type: ignore[no-untyped-def]
    """A node with `changes` to its config, and a phone enrolled for `user_id`, disconnected."""
    async with open_node(dataclasses.replace(config, **changes)) as node, trio.open_nursery() as nursery:
        async with RpcClient.connect("127.0.0.1", node.rpc_port, api_key=operator_key(node)) as rpc:
            phone = await enrolled_phone(node, rpc, nursery, user_id)
            await phone.close()
            yield node, rpc, phone


async def _raw_phone(node, phone) -> tuple[WSConnection, trio.SocketStream]:  # type: ignore[no-untyped-def]
    """A hand-made client, authenticated with `phone`'s key."""
    ws = WSConnection(ConnectionType.CLIENT)
    stream = await trio.open_tcp_stream("127.0.0.1", node.ws_port)
    await stream.send_all(ws.send(Request(host="127.0.0.1", target="/v1/device",
                                          subprotocols=["pushguard.v1+json"])))
    with trio.fail_after(5):
        while not any(isinstance(e, AcceptConnection) for e in ws.events()):
            ws.receive_data(await stream.receive_some(65536))
    await stream.send_all(ws.send(TextMessage(json.dumps({"type": "hello", "token": phone.hello_token()}))))
    return ws, stream


async def test_phone_that_stops_answering_pings_is_dropped_and_its_actor_knows(config):
    async with enrolled_on_node(config, "mute", heartbeat_s=0.2, heartbeat_timeout_s=0.3) as (node, rpc, phone):
        # A hand-made client: it authenticates, then never reads again, so
        # it never answers a ping.
        _, stream = await _raw_phone(node, phone)
        with trio.fail_after(5):
            while (await rpc.call("push.device", "mute"))["connected"] is not True:
                await trio.sleep(0.02)
        with trio.fail_after(5):
            while (await rpc.call("push.device", "mute"))["connected"] is not False:
                await trio.sleep(0.05)
        assert node.stats.counters["heartbeat_timeouts"] == 1
        assert not node.gateway.connections
        await stream.aclose()


async def test_a_phone_that_answers_is_pinged_every_heartbeat_and_kept(config):
    async with enrolled_on_node(config, "lively", heartbeat_s=0.1, heartbeat_timeout_s=0.3) as (node, rpc, phone):
        ws, stream = await _raw_phone(node, phone)
        pings: list[float] = []
        with trio.move_on_after(1.2):
            while True:
                ws.receive_data(await stream.receive_some(65536))
                for event in ws.events():
                    if isinstance(event, Ping):
                        pings.append(trio.current_time())
                        await stream.send_all(ws.send(event.response()))
        # ~11 heartbeats of 0.1 s in 1.2 s, each up to a tick (5 ms) late
        assert 8 <= len(pings) <= 12, pings
        gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
        assert all(0.08 <= gap <= 0.2 for gap in gaps), gaps
        assert (await rpc.call("push.device", "lively"))["connected"] is True
        assert node.stats.counters.get("heartbeat_timeouts", 0) == 0
        await stream.aclose()


async def test_ended_connections_leave_the_heartbeat_line(config):
    async with enrolled_on_node(config, "fickle", heartbeat_s=0.05, heartbeat_timeout_s=5) as (node, rpc, phone):
        streams = []
        for _ in range(20):  # each hello replaces the connection before it
            _, stream = await _raw_phone(node, phone)
            streams.append(stream)
            with trio.fail_after(5):
                while len(node.gateway.heartbeat) < 1 or not node.gateway.connections:
                    await trio.sleep(0.01)
        with trio.fail_after(10):
            while len(node.gateway.connections) != 1 or len(node.gateway.heartbeat) != 1:
                await trio.sleep(0.05)
        for stream in streams:
            await stream.aclose()
