"""The websocket contract at its edges: handshake, pre-auth rules, bad frames, limits."""

from __future__ import annotations

import dataclasses
import json
import ssl

import msgpack
import pytest
import trio
import trustme
from trio_websocket import ConnectionRejected, wrap_client_stream

from engine.config import Listener
from engine.node import open_node
from engine.protocol.device import ChallengeFrame, Error
from engine.rpc_client import RpcClient
from simulator.device import SimPhone
from tests.conftest import enrolled_phone, node_config, operator_key, ws_url

pytestmark = pytest.mark.trio


async def handshake(node, path: str, subprotocols: list[str]) -> int | str:
    """The HTTP status of a rejected handshake, or the subprotocol accepted."""
    # Our own stream: trio-websocket leaves a client socket open when the
    # server rejects the handshake.
    stream = await trio.open_tcp_stream("127.0.0.1", node.ws_port)
    outcome: int | str = ""
    try:
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(nursery, stream, "127.0.0.1", path, subprotocols=subprotocols)
            outcome = ws.subprotocol or ""
            await ws.aclose()
    except* ConnectionRejected as group:
        outcome = group.exceptions[0].status_code
    finally:
        await stream.aclose()
    return outcome


async def test_handshake_without_our_subprotocol_is_rejected(node):
    assert await handshake(node, "/v1/device", ["chat"]) == 400
    assert await handshake(node, "/elsewhere", ["pushguard.v1+json"]) == 404
    assert await handshake(node, "/v1/device", ["chat", "pushguard.v1+json"]) == "pushguard.v1+json"


async def test_frames_before_hello_get_errors_then_1008(node):
    async with trio.open_nursery() as nursery:
        phone = SimPhone(ws_url(node), nursery, encoding="json")
        await phone.connect()
        await phone.send_raw(json.dumps({"type": "ack", "id": "ch_x", "shown": True}))
        error = await phone.receive()
        assert isinstance(error, Error) and error.code == "not_authenticated" and error.id == "ch_x"
        await phone.send_raw("not json at all")
        assert (await phone.receive()).code == "bad_frame"
        await phone.send_raw(json.dumps({"type": "teleport"}))
        assert (await phone.receive()).code == "unknown_type"
        await phone.send_raw(json.dumps({"type": "hello", "token": 42}))
        assert (await phone.receive()).code == "invalid_field"
        await phone.send_raw(b"\x81\xa4type\xa5hello")  # a binary frame on the json subprotocol
        assert (await phone.receive()).code == "bad_frame"
        assert await phone.wait_closed() == 1008


async def test_oversized_frame_gets_too_large(node):
    async with trio.open_nursery() as nursery:
        phone = SimPhone(ws_url(node), nursery)
        await phone.connect()
        await phone.send_raw(msgpack.packb({"type": "hello", "token": "x" * 70_000}))
        error = await phone.receive()
        assert isinstance(error, Error) and error.code == "too_large"
        await phone.close()


async def test_no_hello_closes_with_4408(config):
    async with open_node(dataclasses.replace(config, hello_timeout_s=0.3)) as node:
        async with trio.open_nursery() as nursery:
            phone = SimPhone(ws_url(node), nursery)
            await phone.connect()
            assert await phone.wait_closed() == 4408


async def test_bad_peer_does_not_disturb_a_good_one(node, rpc):
    async with trio.open_nursery() as nursery:
        good = await enrolled_phone(node, rpc, nursery, "good")
        bad = await enrolled_phone(node, rpc, nursery, "bad")
        for _ in range(10):
            try:
                await bad.send_raw(b"\xc1garbage")
            except Exception:
                break
        assert await bad.wait_closed() == 1008
        created = await rpc.call("challenge.create", "good", {"kind": "login", "name": "x"}, {})
        frame = await good.expect(ChallengeFrame)
        assert frame.id == created["challenge_id"]
        assert (await good.respond(frame, "approve")).status == "approved"
        await good.close()


async def test_node_shutdown_closes_phones_with_1001(config):
    async with trio.open_nursery() as nursery:
        async with open_node(config) as node:
            async with RpcClient.connect("127.0.0.1", node.rpc_port, api_key=operator_key(node)) as rpc:
                phone = await enrolled_phone(node, rpc, nursery, "shut")
        assert await phone.wait_closed() == 1001


async def test_connections_beyond_the_budget_are_refused_with_1013(config):
    async with open_node(dataclasses.replace(config, max_connections=1)) as node:
        async with trio.open_nursery() as nursery:
            first = SimPhone(ws_url(node), nursery)
            await first.connect()
            second = SimPhone(ws_url(node), nursery)
            await second.connect()
            assert await second.wait_closed() == 1013
            await first.close()


async def test_tls_on_both_listeners(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(certfile)
    cert.private_key_pem.write_to_path(keyfile)
    tls = {"certfile": str(certfile), "keyfile": str(keyfile)}
    config = node_config(tmp_path / "node", ws=Listener(port=0, **tls), rpc=Listener(port=0, **tls))
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    async with open_node(config) as node:
        async with RpcClient.connect("127.0.0.1", node.rpc_port, api_key=operator_key(node),
                                     ssl_context=client_context, server_hostname="127.0.0.1") as rpc:
            started = await rpc.call("push.begin_enrollment", "tls-user")
            assert "url=wss%3A%2F%2F" in started["uri"]
            async with trio.open_nursery() as nursery:
                phone = SimPhone(f"wss://127.0.0.1:{node.ws_port}/v1/device", nursery,
                                 ssl_context=client_context)
                await phone.enroll(started["uri"])
                await phone.hello()
                await rpc.call("challenge.create", "tls-user", {"kind": "login", "name": "x"}, {})
                frame = await phone.expect(ChallengeFrame)
                assert (await phone.respond(frame, "approve")).status == "approved"
                await phone.close()
        with pytest.raises(Exception):
            async with RpcClient.connect("127.0.0.1", node.rpc_port, api_key="x", connect_timeout=2):
                pass  # plain TCP to a TLS listener
