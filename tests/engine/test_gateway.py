"""Gateway behaviour that needs a peer the simulator will not imitate."""

from __future__ import annotations

import dataclasses
import json

import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

from engine.node import open_node
from engine.rpc_client import RpcClient
from tests.conftest import enrolled_phone, operator_key

pytestmark = pytest.mark.trio


async def test_phone_that_stops_answering_pings_is_dropped_and_its_actor_knows(config):
    config = dataclasses.replace(config, heartbeat_s=0.2, heartbeat_timeout_s=0.3)
    async with open_node(config) as node, trio.open_nursery() as nursery:
        async with RpcClient.connect("127.0.0.1", node.rpc_port, api_key=operator_key(node)) as rpc:
            phone = await enrolled_phone(node, rpc, nursery, "mute")
            await phone.close()
            # A hand-made client: it authenticates, then never reads again, so
            # it never answers a ping.
            ws = WSConnection(ConnectionType.CLIENT)
            stream = await trio.open_tcp_stream("127.0.0.1", node.ws_port)
            await stream.send_all(ws.send(Request(host="127.0.0.1", target="/v1/device",
                                                  subprotocols=["pushguard.v1+json"])))
            with trio.fail_after(5):
                while not any(isinstance(e, AcceptConnection) for e in ws.events()):
                    ws.receive_data(await stream.receive_some(65536))
            await stream.send_all(ws.send(TextMessage(json.dumps({"type": "hello",
                                                                   "token": phone.hello_token()}))))
            with trio.fail_after(5):
                while (await rpc.call("push.device", "mute"))["connected"] is not True:
                    await trio.sleep(0.02)
            with trio.fail_after(5):
                while (await rpc.call("push.device", "mute"))["connected"] is not False:
                    await trio.sleep(0.05)
            assert node.stats.counters["heartbeat_timeouts"] == 1
            assert not node.gateway.connections
            await stream.aclose()
