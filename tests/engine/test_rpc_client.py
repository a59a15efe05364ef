"""RpcClient against a small msgpack-RPC server written here, under Trio and asyncio.

The server speaks through engine.protocol.rpc over anyio sockets on
127.0.0.1 port 0; each test gives it a handler that decides what to answer,
and when, so out-of-order answers, silence and abrupt closes can be staged.
"""

from __future__ import annotations

import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import pytest
import trustme
from anyio.abc import ByteStream, SocketAttribute
from anyio.streams.tls import TLSListener

from engine.errors import RpcError, RpcErrorCode
from engine.protocol.rpc import Notification, Request, Response, RpcConnection
from engine.rpc_client import ConnectionLost, RemoteError, RpcClient

pytestmark = pytest.mark.anyio

API_KEY = "pg_test_key"
TEST_DEADLINE = 20  # seconds


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request):
    return request.param


class ServerSide:
    """One accepted connection as the test server sees it."""

    def __init__(self, stream: ByteStream):
        self.stream = stream
        self.protocol = RpcConnection()

    async def next_message(self):
        """The next message from the client, or None once it has closed."""
        while (message := self.protocol.next_event()) is None:
            try:
                data = await self.stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return None
            self.protocol.receive_data(data)
        return message

    async def reply(self, msgid: int, result=None, error=None) -> None:
        await self.stream.send(self.protocol.response(msgid, error, result))

    async def notify(self, method: str, params: list) -> None:
        await self.stream.send(self.protocol.notification(method, params))


Handler = Callable[[ServerSide], Awaitable[None]]


@asynccontextmanager
async def rpc_server(handler: Handler, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    """Serve `handler` per connection on 127.0.0.1; yields the port."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(SocketAttribute.local_port)
    if ssl_context is not None:
        listener = TLSListener(listener, ssl_context)

    async def serve_one(stream: ByteStream) -> None:
        async with stream:
            await handler(ServerSide(stream))

    async with listener, anyio.create_task_group() as task_group:
        task_group.start_soon(listener.serve, serve_one)
        # A client that waits for something that never comes fails the test
        # instead of hanging it.
        with anyio.fail_after(TEST_DEADLINE):
            yield port
        task_group.cancel_scope.cancel()


def method_server(methods: dict[str, Callable]) -> Handler:
    """A handler answering requests in order with `methods`; RpcError becomes an error."""

    async def handler(server: ServerSide) -> None:
        while (message := await server.next_message()) is not None:
            if not isinstance(message, Request):
                continue
            try:
                result = methods[message.method](*message.params)
            except RpcError as exc:
                await server.reply(message.msgid, error=exc)
            else:
                await server.reply(message.msgid, result)

    return handler


def authenticating_server(calls: list[str]) -> Handler:
    authed = False

    def auth(key):
        nonlocal authed
        calls.append("auth")
        if key != API_KEY:
            raise RpcError(RpcErrorCode.FORBIDDEN, "unknown api key")
        authed = True
        return "admin"

    def whoami():
        calls.append("whoami")
        if not authed:
            raise RpcError(RpcErrorCode.UNAUTHENTICATED)
        return {"role": "admin"}

    return method_server({"auth": auth, "whoami": whoami})


# -- auth and calls --------------------------------------------------------------


async def test_auth_then_call():
    calls: list[str] = []
    async with rpc_server(authenticating_server(calls)) as port:
        async with RpcClient.connect("127.0.0.1", port, api_key=API_KEY) as client:
            assert client.role == "admin"
            assert await client.call("whoami") == {"role": "admin"}
    assert calls == ["auth", "whoami"]


async def test_without_api_key_no_auth_is_sent():
    calls: list[str] = []
    async with rpc_server(authenticating_server(calls)) as port:
        async with RpcClient.connect("127.0.0.1", port) as client:
            assert client.role is None
            with pytest.raises(RemoteError) as info:
                await client.call("whoami")
    assert info.value.code == RpcErrorCode.UNAUTHENTICATED
    assert calls == ["whoami"]


async def test_refused_auth_raises_remote_error_from_connect():
    async with rpc_server(authenticating_server([])) as port:
        with pytest.raises(RemoteError) as info:
            async with RpcClient.connect("127.0.0.1", port, api_key="wrong"):
                raise AssertionError("connect must not yield after a refused auth")
    assert info.value.code == RpcErrorCode.FORBIDDEN
    assert info.value.message == "unknown api key"


async def test_errors_from_the_callers_block_are_not_wrapped_in_a_group():
    async with rpc_server(method_server({})) as port:
        with pytest.raises(KeyError):
            async with RpcClient.connect("127.0.0.1", port):
                raise KeyError("mine")


async def test_fifty_pipelined_calls_answered_out_of_order():
    async def handler(server: ServerSide) -> None:
        # Nothing is answered until all 50 requests have arrived, which only
        # happens if the client pipelines them on the one connection.
        requests = []
        while len(requests) < 50:
            message = await server.next_message()
            assert isinstance(message, Request)
            requests.append(message)
        assert len({r.msgid for r in requests}) == 50
        random.Random(7).shuffle(requests)
        for request in requests:
            await server.reply(request.msgid, request.params[0] ** 2)
        await server.next_message()

    results: dict[int, int] = {}
    async with rpc_server(handler) as port:
        async with RpcClient.connect("127.0.0.1", port) as client:

            async def square(i: int) -> None:
                results[i] = await client.call("square", i, timeout=10)

            async with anyio.create_task_group() as task_group:
                for i in range(50):
                    task_group.start_soon(square, i)
    assert results == {i: i * i for i in range(50)}


async def test_remote_error_with_details():
    def challenge_create(user):
        raise RpcError(
            RpcErrorCode.PUSH_LIMITED,
            details={"retry_after_s": 30, "open_challenge_id": "c1"},
        )

    async with rpc_server(method_server({"challenge.create": challenge_create, "ping": lambda: "pong"})) as port:
        async with RpcClient.connect("127.0.0.1", port) as client:
            with pytest.raises(RemoteError) as info:
                await client.call("challenge.create", "alice")
            # The connection is still good after an error answer.
            assert await client.call("ping") == "pong"
    error = info.value
    assert error.code == "push_limited"
    assert error.message.startswith("too many open challenges")
    assert error.details == {"retry_after_s": 30, "open_challenge_id": "c1"}
    assert "push_limited" in str(error) and error.message in str(error)


def test_remote_error_from_a_generic_server_shape():
    assert RemoteError.from_wire(["not_found", "no such challenge"]).details is None
    bare = RemoteError.from_wire("plain string error")
    assert (bare.code, bare.message) == ("internal", "plain string error")


# -- notifications -----------------------------------------------------------------


async def test_notifications_are_delivered_in_order():
    async def handler(server: ServerSide) -> None:
        message = await server.next_message()
        await server.reply(message.msgid, "subscribed")
        for n in range(3):
            await server.notify("event", [{"type": "decided", "n": n}])
        await server.next_message()

    async with rpc_server(handler) as port:
        async with RpcClient.connect("127.0.0.1", port) as client:
            with client.notifications() as events:
                assert await client.call("subscribe") == "subscribed"
                received = [await events.receive() for _ in range(3)]
    assert received == [Notification("event", [{"type": "decided", "n": n}]) for n in range(3)]
    assert client.notifications_dropped == 0


async def test_undrained_notifications_are_dropped_and_counted_without_blocking_replies():
    async def handler(server: ServerSide) -> None:
        message = await server.next_message()
        for n in range(10):
            await server.notify("event", [n])
        # Sent after the notifications: it arrives only if the reader kept going.
        await server.reply(message.msgid, "flushed")
        await server.next_message()

    async with rpc_server(handler) as port:
        async with RpcClient.connect("127.0.0.1", port, notification_buffer=2) as client:
            assert await client.call("flush", timeout=10) == "flushed"
            assert client.notifications_dropped == 8
            with client.notifications() as events:
                assert [events.receive_nowait().params for _ in range(2)] == [[0], [1]]
                with pytest.raises(anyio.WouldBlock):
                    events.receive_nowait()


async def test_notification_stream_ends_with_the_connection():
    async def handler(server: ServerSide) -> None:
        await server.notify("event", ["last"])

    async with rpc_server(handler) as port:
        async with RpcClient.connect("127.0.0.1", port) as client:
            with client.notifications() as events:
                received = [n async for n in events]
    assert received == [Notification("event", ["last"])]


# -- losing the connection ---------------------------------------------------------


async def test_pending_calls_raise_connection_lost_when_the_server_closes():
    async def handler(server: ServerSide) -> None:
        for _ in range(3):
            await server.next_message()
        # returning closes the connection with three calls unanswered

    outcomes: list[BaseException] = []
    async with rpc_server(handler) as port:
        async with RpcClient.connect("127.0.0.1", port) as client:

            async def call(i: int) -> None:
                with pytest.raises(ConnectionLost) as info:
                    await client.call("never", i, timeout=10)
                outcomes.append(info.value)

            async with anyio.create_task_group() as task_group:
                for i in range(3):
                    task_group.start_soon(call, i)
            with pytest.raises(ConnectionLost):
                await client.call("later")
    assert len(outcomes) == 3
    assert all(str(exc) == "the server closed the connection" for exc in outcomes)


async def test_server_error_notification_becomes_the_connection_lost_message():
    async def handler(server: ServerSide) -> None:
        await server.next_message()
        await server.notify("error", [["too_large", "message over 1048576 bytes"]])

    async with rpc_server(handler) as port:
        async with RpcClient.connect("127.0.0.1", port) as client:
            with pytest.raises(ConnectionLost) as info:
                await client.call("anything", timeout=10)
    assert info.value.code == "too_large"
    assert info.value.message == "message over 1048576 bytes"
    assert "too_large" in str(info.value)


async def test_garbage_from_the_server_loses_the_connection():
    async def handler(server: ServerSide) -> None:
        await server.next_message()
        await server.stream.send(b"\xc1")
        await server.next_message()

    async with rpc_server(handler) as port:
        async with RpcClient.connect("127.0.0.1", port) as client:
            with pytest.raises(ConnectionLost) as info:
                await client.call("anything", timeout=10)
    assert info.value.code == "invalid_request"


async def test_calls_after_aclose_raise_connection_lost():
    async with rpc_server(method_server({"ping": lambda: "pong"})) as port:
        async with RpcClient.connect("127.0.0.1", port) as client:
            assert await client.call("ping") == "pong"
            await client.aclose()
            await client.aclose()
            with pytest.raises(ConnectionLost, match="client closed"):
                await client.call("ping")


async def test_connect_to_a_closed_port_raises_oserror():
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(SocketAttribute.local_port)
    await listener.aclose()
    with pytest.raises(OSError):
        async with RpcClient.connect("127.0.0.1", port, connect_timeout=5):
            pass


# -- timeouts ------------------------------------------------------------------------


async def test_timeout_forgets_the_msgid_and_ignores_the_late_answer():
    async def handler(server: ServerSide) -> None:
        slow = await server.next_message()
        fast = await server.next_message()
        # The late answer to the timed-out call comes first; the client must
        # drop it, not hand it to the next call.
        await server.reply(slow.msgid, "late")
        await server.reply(fast.msgid, "fast")
        await server.next_message()

    async with rpc_server(handler) as port:
        async with RpcClient.connect("127.0.0.1", port) as client:
            with pytest.raises(TimeoutError):
                await client.call("slow", timeout=0.1)
            assert client._pending == {}  # forgotten, not kept for an answer that may never come
            assert await client.call("fast", timeout=10) == "fast"


async def test_a_call_cancelled_by_its_caller_leaves_the_connection_usable():
    async def handler(server: ServerSide) -> None:
        ignored = await server.next_message()
        answered = await server.next_message()
        await server.reply(ignored.msgid, "late")
        await server.reply(answered.msgid, "ok")
        await server.next_message()

    async with rpc_server(handler) as port:
        async with RpcClient.connect("127.0.0.1", port) as client:
            with anyio.move_on_after(0.1) as scope:
                await client.call("ignored")
            assert scope.cancelled_caught
            assert await client.call("answered", timeout=10) == "ok"


async def test_a_send_cut_short_by_its_deadline_abandons_the_connection():
    # The listener never accepts, so nothing reads the socket (an asyncio
    # server would buffer everything in user space) and a write soon blocks
    # part-way through a message. A half-written message would unframe every
    # later one, so the client must give the connection up.
    outcomes: list[type[BaseException]] = []
    async with await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0) as listener:
        port = listener.extra(SocketAttribute.local_port)
        with anyio.fail_after(TEST_DEADLINE):
            async with RpcClient.connect("127.0.0.1", port) as client:

                async def bulky() -> None:
                    try:
                        await client.call("store", "x" * 900_000, timeout=1)
                    except (TimeoutError, ConnectionLost) as exc:
                        outcomes.append(type(exc))

                async with anyio.create_task_group() as task_group:
                    for _ in range(40):
                        task_group.start_soon(bulky)
                with pytest.raises(ConnectionLost, match="timed out while it was being sent"):
                    await client.call("ping", timeout=1)
    assert len(outcomes) == 40 and TimeoutError in outcomes


# -- the server calling the client ---------------------------------------------------


async def test_a_request_from_the_server_is_refused_not_left_hanging():
    answers: list = []

    async def handler(server: ServerSide) -> None:
        first = await server.next_message()
        await server.stream.send(server.protocol.request(77, "ping", []))
        answers.append(await server.next_message())
        await server.reply(first.msgid, "done")
        await server.next_message()

    async with rpc_server(handler) as port:
        async with RpcClient.connect("127.0.0.1", port) as client:
            assert await client.call("go", timeout=10) == "done"
    [answer] = answers
    assert isinstance(answer, Response) and answer.msgid == 77
    assert answer.error[0] == "unknown_method" and answer.result is None


# -- TLS -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate_authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_tls(certificate_authority) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate_authority.issue_cert("127.0.0.1").configure_cert(context)
    return context


@pytest.fixture
def client_tls(certificate_authority) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    certificate_authority.configure_trust(context)
    return context


async def test_tls_auth_and_call(server_tls, client_tls):
    calls: list[str] = []
    async with rpc_server(authenticating_server(calls), ssl_context=server_tls) as port:
        async with RpcClient.connect("127.0.0.1", port, api_key=API_KEY, ssl_context=client_tls) as client:
            assert client.role == "admin"
            assert await client.call("whoami") == {"role": "admin"}
    assert calls == ["auth", "whoami"]


async def test_tls_refuses_a_server_the_client_does_not_trust(server_tls):
    untrusting = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)  # system CAs only
    async with rpc_server(method_server({}), ssl_context=server_tls) as port:
        with pytest.raises(ssl.SSLCertVerificationError):
            async with RpcClient.connect("127.0.0.1", port, ssl_context=untrusting):
                pass


async def test_tls_checks_the_server_hostname(server_tls, client_tls):
    async with rpc_server(method_server({}), ssl_context=server_tls) as port:
        with pytest.raises(ssl.SSLCertVerificationError):
            async with RpcClient.connect("127.0.0.1", port, ssl_context=client_tls, server_hostname="node.example"):
                pass
