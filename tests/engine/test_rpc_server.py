"""The RPC server against misbehaving and demanding clients, over real sockets."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
import trio

from engine.node import open_node
from engine.protocol.device import ChallengeFrame
from engine.rpc_client import RpcClient
from tests.conftest import enrolled_phone, operator_key, rpc_client

pytestmark = pytest.mark.trio


class RawPeer:
    """A msgpack-RPC peer with no client library: bytes in, decoded values out."""

    def __init__(self, stream: trio.SocketStream):
        self.stream = stream
        self.unpacker = msgpack.Unpacker(raw=False)

    @classmethod
    async def open(cls, node) -> RawPeer:
        return cls(await trio.open_tcp_stream("127.0.0.1", node.rpc_port))

    async def send(self, value) -> None:
        await self.stream.send_all(msgpack.packb(value))

    async def receive(self, timeout: float = 5):
        with trio.fail_after(timeout):
            while True:
                for value in self.unpacker:
                    return value
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return None  # reset: the node closed with our bytes unread
                if not data:
                    return None  # closed by the node
                self.unpacker.feed(data)

    async def close(self) -> None:
        await self.stream.aclose()


async def test_pipelined_requests_are_answered_out_of_order(node, rpc):
    async with trio.open_nursery() as nursery:
        phone = await enrolled_phone(node, rpc, nursery, "pip")
        created = await rpc.call("challenge.create", "pip", {"kind": "login", "name": "x"}, {})
        peer = await RawPeer.open(node)
        await peer.send([0, 1, "auth", [operator_key(node)]])
        assert await peer.receive() == [1, 1, None, {"role": "operator"}]
        # A slow request first, then a quick one: the quick answer overtakes it.
        await peer.send([0, 2, "challenge.wait", [created["challenge_id"], 0.5]])
        await peer.send([0, 3, "policy.get", []])
        first, second = await peer.receive(), await peer.receive()
        assert first[1] == 3 and first[2] is None
        assert second[1] == 2 and second[3]["status"] == "pending"
        await peer.close()
        await phone.close()


async def test_requests_before_auth_and_shape_errors(node):
    peer = await RawPeer.open(node)
    await peer.send([0, 7, "policy.get", []])
    assert await peer.receive() == [1, 7, ["unauthenticated", "call auth(api_key) first"], None]
    await peer.send([0, 8, "auth"])  # wrong arity for a request
    reply = await peer.receive()
    assert reply[:2] == [1, 8] and reply[2][0] == "invalid_request"
    await peer.send([0, 9, "auth", [operator_key(node)]])
    assert (await peer.receive())[3] == {"role": "operator"}
    await peer.send([0, 10, "challenge.get", [42]])
    assert (await peer.receive())[2][0] == "invalid_params"
    await peer.send([0, 11, "nope", []])
    assert (await peer.receive())[2][0] == "unknown_method"
    await peer.send("just a string")
    assert (await peer.receive())[:2] == [2, "error"]
    await peer.send([0, 12, "policy.get", []])  # the connection is still fine
    assert (await peer.receive())[:3] == [1, 12, None]
    await peer.close()


async def test_garbage_and_oversize_close_only_that_connection(node, rpc):
    peer = await RawPeer.open(node)
    await peer.stream.send_all(b"\xc1\xc1\xc1")  # never valid msgpack
    assert (await peer.receive())[:2] == [2, "error"]
    assert await peer.receive() is None
    await peer.close()

    big = await RawPeer.open(node)
    await big.send([0, 1, "auth", [operator_key(node)]])
    await big.receive()
    await big.stream.send_all(msgpack.packb([0, 2, "policy.set", [{"x": "y" * (2 << 20)}]]))
    notice = await big.receive()
    assert notice[:2] == [2, "error"] and notice[2][0][0] == "too_large"
    assert await big.receive() is None
    await big.close()
    assert (await rpc.call("policy.get"))["challenge_ttl_s"] == 60


async def test_events_subscription_streams_lifecycle(node, rpc):
    async with rpc_client(node) as feed, trio.open_nursery() as nursery:
        with feed.notifications() as notes:
            await feed.call("events.subscribe", ["challenge."])
            phone = await enrolled_phone(node, rpc, nursery, "eve")
            created = await rpc.call("challenge.create", "eve", {"kind": "login", "name": "x"}, {})
            frame = await phone.expect(ChallengeFrame)
            await phone.ack(frame.id)
            await phone.respond(frame, "approve")
            kinds = []
            with trio.fail_after(5):
                async for note in notes:
                    assert note.method == "event"
                    event = note.params[0]
                    assert event["kind"].startswith("challenge.")
                    assert event["challenge_id"] == created["challenge_id"]
                    kinds.append(event["kind"])
                    if event["kind"] == "challenge.decided":
                        break
        assert kinds == ["challenge.created", "challenge.sent", "challenge.delivered", "challenge.shown",
                         "challenge.decided"]
        await phone.close()


async def test_slow_subscriber_is_cut_off_and_engine_keeps_going(config):
    config = dataclasses.replace(config, event_buffer=4)
    async with open_node(config) as node:
        key = operator_key(node)
        async with RpcClient.connect("127.0.0.1", node.rpc_port, api_key=key) as rpc:
            # A raw subscriber that never reads again.
            slow = await RawPeer.open(node)
            await slow.send([0, 1, "auth", [key]])
            await slow.send([0, 2, "events.subscribe", [[]]])
            await slow.receive()
            await slow.receive()
            with trio.fail_after(20):
                for i in range(3000):
                    await rpc.call("push.begin_enrollment", f"user-{i % 50}")
                    if node.state.bus.overflows:
                        break
            stats = await rpc.call("stats.get")
            assert stats["subscribers_cut_off"] >= 1
            await slow.close()
