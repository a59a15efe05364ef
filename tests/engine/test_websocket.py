"""The gateway's websocket layer against a hand-made wsproto client: what
trio-websocket used to do for us, checked on the wire."""

from __future__ import annotations

import json

import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)

pytestmark = pytest.mark.trio


class RawPhone:
    def __init__(self, stream: trio.SocketStream, ws: WSConnection):
        self.stream, self.ws = stream, ws

    @classmethod
    async def open(cls, node, *, path: str = "/v1/device", subprotocols=("pushguard.v1+json",)):
        ws = WSConnection(ConnectionType.CLIENT)
        stream = await trio.open_tcp_stream("127.0.0.1", node.ws_port)
        await stream.send_all(ws.send(Request(host="127.0.0.1", target=path, subprotocols=list(subprotocols))))
        return cls(stream, ws)

    async def events(self, until, timeout: float = 5.0) -> list:
        seen = []
        with trio.fail_after(timeout):
            while not any(isinstance(e, until) for e in seen):
                data = await self.stream.receive_some(65536)
                if not data:
                    break
                self.ws.receive_data(data)
                seen.extend(self.ws.events())
        return seen

    async def send(self, event) -> None:
        await self.stream.send_all(self.ws.send(event))


async def test_wrong_path_and_missing_subprotocol_are_refused_with_http_errors(node):
    for kwargs, status in (({"path": "/elsewhere"}, 404), ({"subprotocols": ("chat",)}, 400)):
        phone = await RawPhone.open(node, **kwargs)
        (reject,) = [e for e in await phone.events(RejectConnection) if isinstance(e, RejectConnection)]
        assert reject.status_code == status
        await phone.stream.aclose()


async def test_pings_are_answered_and_fragments_are_joined(node):
    phone = await RawPhone.open(node)
    assert any(isinstance(e, AcceptConnection) for e in await phone.events(AcceptConnection))
    await phone.send(Ping(payload=b"are you there"))
    pongs = [e for e in await phone.events(Pong) if isinstance(e, Pong)]
    assert pongs[0].payload == b"are you there"
    # A frame in three fragments is one message: here an ack before hello,
    # which the node answers with not_authenticated.
    text = json.dumps({"type": "ack", "id": "ch_x", "shown": True})
    for i, part in enumerate((text[:5], text[5:20], text[20:])):
        await phone.send(TextMessage(data=part, message_finished=i == 2))
    (reply,) = [e for e in await phone.events(Message) if isinstance(e, Message)]
    assert json.loads(reply.data)["code"] == "not_authenticated"
    await phone.stream.aclose()


async def test_a_message_over_a_mebibyte_closes_with_1009_and_the_node_goes_on(node, rpc):
    phone = await RawPhone.open(node)
    await phone.events(AcceptConnection)
    filler = "x" * 60_000
    try:
        for _ in range(30):  # 1.8 MB in fragments: never a whole message
            await phone.send(TextMessage(data=filler, message_finished=False))
    except trio.BrokenResourceError:
        pass  # the node may hang up before it all went out
    closes = [e for e in await phone.events(CloseConnection) if isinstance(e, CloseConnection)]
    assert closes and closes[0].code == 1009
    await phone.stream.aclose()
    with trio.fail_after(5):
        while (await rpc.call("stats.get"))["connections"] != 0:
            await trio.sleep(0.02)
