"""A msgpack-RPC client for backends and the console, on Trio or asyncio.

It uses anyio only, so the same code runs inside a Trio node, a Trio test, the
asyncio-based Textual console, or an asyncio web backend:

    async with RpcClient.connect("node.example", 7464, api_key=key, ssl_context=ctx) as client:
        challenge = await client.call("challenge.create", request, timeout=5)
        with client.notifications() as events:
            async for event in events:
                ...

One connection carries many concurrent calls: each gets its own msgid and the
reader task completes it whenever its response arrives, in any order. The
reader never blocks: notifications go into a bounded buffer and, when the
application does not drain it, new ones are dropped and counted in
`notifications_dropped` rather than stalling the responses behind them.

When the connection ends, every pending and later call raises `ConnectionLost`.
If the server explained itself first with an `error` notification (see
`engine.protocol.rpc`), that code and message are the `ConnectionLost`'s.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.abc import ByteStream, TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream

from engine.errors import RpcErrorCode
from engine.protocol.rpc import (
    ERROR_NOTIFICATION,
    MAX_MSGID,
    Notification,
    Request,
    Response,
    RpcConnection,
    RpcFramingError,
    RpcMessage,
)

RECEIVE_SIZE = 65536
CLOSE_TIMEOUT = 2.0  # seconds a graceful (TLS close_notify) close may take before it is forced

_STREAM_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


class RemoteError(Exception):
    """The server answered a call with an error array.

    Attributes:
        code: element 0, normally an `engine.errors.RpcErrorCode` value (a str,
            so `exc.code == RpcErrorCode.NOT_FOUND` works); kept as a plain
            str so that codes from a newer server still arrive.
        message: element 1.
        details: element 2, or None when the error had two elements.
    """

    def __init__(self, code: str, message: str, details: Any = None):
        self.code = code
        self.message = message
        self.details = details
        super().__init__(f"{code}: {message}")

    @classmethod
    def from_wire(cls, error: Any) -> RemoteError:
        """Read the error element of a response.

        Anything but an array of two or three elements (a generic server may
        send a bare string) becomes an `internal` error carrying its text.
        """
        if isinstance(error, list) and len(error) >= 2:
            return cls(str(error[0]), str(error[1]), error[2] if len(error) > 2 else None)
        text = error if isinstance(error, str) else repr(error)
        return cls(str(RpcErrorCode.INTERNAL), text)


class ConnectionLost(Exception):
    """The connection ended; the call cannot be answered.

    Attributes:
        message: why, from the server's `error` notification when it sent one.
        code: the server's error code, or None when it gave no reason.
    """

    def __init__(self, message: str, code: str | None = None):
        self.message = message
        self.code = code
        super().__init__(f"{code}: {message}" if code else message)


class _PendingCall:
    """The one-shot reply slot of a call in flight."""

    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.result: Any = None
        self.error: Exception | None = None

    def resolve(self, result: Any) -> None:
        self.result = result
        self.done.set()

    def fail(self, error: Exception) -> None:
        self.error = error
        self.done.set()


def _error_fields(params: list) -> tuple[str | None, str]:
    """(code, message) from the params of an `error` notification, `[[code, message]]`."""
    error = params[0] if params else None
    if isinstance(error, list) and len(error) >= 2:
        return str(error[0]), str(error[1])
    return None, repr(error)


class RpcClient:
    """A connection to a node's msgpack-RPC listener.

    Create it with `RpcClient.connect`, which owns the reader task; the
    constructor is internal.

    Attributes:
        role: the role `auth` granted ("backend" or "operator") when `connect`
            was given an api_key.
        notifications_dropped: server notifications dropped because the
            buffer of `notifications()` was full.
    """

    def __init__(self, stream: ByteStream, task_group: TaskGroup, notification_buffer: int):
        self.role: Any = None
        self.notifications_dropped = 0
        self._stream = stream
        self._task_group = task_group
        self._protocol = RpcConnection()
        self._send_lock = anyio.Lock()
        self._pending: dict[int, _PendingCall] = {}
        self._next_msgid = 0
        self._lost: ConnectionLost | None = None  # the reason; each caller gets its own copy
        self._server_error: tuple[str | None, str] | None = None
        self._notify_send, self._notify_receive = anyio.create_memory_object_stream[Notification](
            notification_buffer
        )
        self._reader_scope = anyio.CancelScope()
        self._reader_started = False
        self._reader_done = anyio.Event()
        self._closing = False

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        api_key: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        connect_timeout: float = 10,
        notification_buffer: int = 1000,
    ) -> AsyncIterator[RpcClient]:
        """Connect, authenticate if asked, and close the connection on exit.

        Args:
            host, port: the node's RPC listener.
            api_key: if given, `auth(api_key)` is called before the client is
                returned, and the role it granted is kept in `role`.
            ssl_context: use TLS with this context; plain TCP when None.
            server_hostname: the name to verify the certificate against
                (default: host). Only used with ssl_context.
            connect_timeout: seconds for the TCP connect, TLS handshake and auth
                call each.
            notification_buffer: how many notifications wait for the
                application before new ones are dropped.

        Raises:
            OSError: the connection could not be made.
            TimeoutError: connecting, the handshake or auth took too long.
            RemoteError: auth was refused.
        """
        if notification_buffer < 0:
            raise ValueError("notification_buffer must not be negative")
        with anyio.fail_after(connect_timeout):
            stream = await anyio.connect_tcp(
                host,
                port,
                ssl_context=ssl_context,
                tls=ssl_context is not None,
                tls_hostname=server_hostname if ssl_context is not None else None,
            )
        # An exception from the caller's block is held and re-raised after the
        # task group, so that it reaches the caller as itself rather than
        # wrapped in an ExceptionGroup.
        failure: Exception | None = None
        async with anyio.create_task_group() as task_group:
            client = cls(stream, task_group, notification_buffer)
            try:
                await task_group.start(client._read_loop)
                if api_key is not None:
                    granted = await client.call("auth", api_key, timeout=connect_timeout)
                    client.role = granted.get("role") if isinstance(granted, dict) else granted
                yield client
            except Exception as exc:
                failure = exc
            finally:
                await client.aclose()
        if failure is not None:
            raise failure

    # -- calls --------------------------------------------------------------

    async def call(self, method: str, *params: Any, timeout: float | None = None) -> Any:
        """Call `method(*params)` on the server and return its result.

        Any number of calls may be in flight at once on one connection.

        Raises:
            RemoteError: the server answered with an error.
            ConnectionLost: the connection ended before the answer arrived.
            TimeoutError: no answer within `timeout` seconds. The msgid is
                forgotten, so a late answer is ignored.
            TypeError, ValueError: the request cannot be encoded or is over 1 MiB.
        """
        if self._lost is not None:
            raise self._connection_lost()
        msgid = self._allocate_msgid()
        data = self._protocol.request(msgid, method, list(params))
        pending = _PendingCall()
        self._pending[msgid] = pending
        try:
            with anyio.move_on_after(math.inf if timeout is None else timeout) as scope:
                await self._send(data, scope.deadline)
                await pending.done.wait()
        finally:
            if self._pending.get(msgid) is pending:
                del self._pending[msgid]
        if not pending.done.is_set():
            raise TimeoutError(f"no answer to {method} within {timeout} s")
        if pending.error is not None:
            raise pending.error
        return pending.result

    def _allocate_msgid(self) -> int:
        # Skipping ids still in flight keeps them unique after the 2**32 wrap;
        # at most len(self._pending) ids can be taken.
        while True:
            msgid = self._next_msgid
            self._next_msgid = (msgid + 1) & MAX_MSGID
            if msgid not in self._pending:
                return msgid

    async def _send(self, data: bytes, deadline: float) -> None:
        async with self._send_lock:
            if self._lost is not None:
                raise self._connection_lost()
            if anyio.current_time() >= deadline:
                raise TimeoutError("deadline passed before the request was sent")
            # A write interrupted halfway would leave part of a message on the
            # wire and unframe every later one, so cancellation waits for the
            # write; only this call's own deadline may cut it short, and then
            # the connection is abandoned.
            with anyio.CancelScope(deadline=deadline, shield=True) as scope:
                try:
                    await self._stream.send(data)
                except _STREAM_ERRORS as exc:
                    raise self._connection_lost() from exc
            if scope.cancelled_caught:
                self._set_lost(ConnectionLost("a request timed out while it was being sent"))
                await anyio.aclose_forcefully(self._stream)
                raise TimeoutError("deadline passed while the request was being sent")

    # -- notifications ------------------------------------------------------

    def notifications(self) -> MemoryObjectReceiveStream[Notification]:
        """A stream of the server's notifications (`error` notifications excepted).

        The caller owns the returned stream and closes it, best with `with`.
        It ends when the connection does. One consumer is expected: several
        streams share one buffer, and each notification goes to one of them.
        """
        return self._notify_receive.clone()

    # -- the reader ---------------------------------------------------------

    async def _read_loop(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._reader_started = True
        try:
            with self._reader_scope:
                task_status.started()
                self._set_lost(await self._read_until_lost())
        finally:
            self._set_lost(ConnectionLost("the client closed the connection"))
            self._fail_pending()
            self._reader_done.set()

    def _fail_pending(self) -> None:
        """Fail the calls in flight and end the notification stream, once lost."""
        for pending in self._pending.values():
            pending.fail(self._connection_lost())
        self._pending.clear()
        self._notify_send.close()

    async def _read_until_lost(self) -> ConnectionLost:
        while True:
            try:
                data = await self._stream.receive(RECEIVE_SIZE)
            except anyio.EndOfStream:
                return self._closed_by_server("the server closed the connection")
            except _STREAM_ERRORS as exc:
                return self._closed_by_server(f"the connection broke ({type(exc).__name__})")
            self._protocol.receive_data(data)
            try:
                while (message := self._protocol.next_event()) is not None:
                    self._dispatch(message)
            except RpcFramingError as exc:
                # A server that sends garbage cannot be trusted with the calls
                # still pending either.
                await anyio.aclose_forcefully(self._stream)
                return ConnectionLost(f"the server sent an invalid message: {exc.message}", str(exc.code))

    def _closed_by_server(self, default: str) -> ConnectionLost:
        if self._server_error is None:
            return ConnectionLost(default)
        code, message = self._server_error
        return ConnectionLost(message, code)

    def _dispatch(self, message: RpcMessage) -> None:
        match message:
            case Response(msgid=msgid, error=None, result=result):
                # None when the call timed out and forgot its msgid.
                if (pending := self._pending.pop(msgid, None)) is not None:
                    pending.resolve(result)
            case Response(msgid=msgid, error=error):
                if (pending := self._pending.pop(msgid, None)) is not None:
                    pending.fail(RemoteError.from_wire(error))
            case Notification(method=method, params=params) if method == ERROR_NOTIFICATION:
                # Kept as the reason to report if the server then closes.
                self._server_error = _error_fields(params)
            case Notification():
                try:
                    self._notify_send.send_nowait(message)
                except (anyio.WouldBlock, anyio.BrokenResourceError):
                    self.notifications_dropped += 1
            case Request(msgid=msgid):
                self._task_group.start_soon(self._refuse_request, msgid)

    async def _refuse_request(self, msgid: int) -> None:
        # msgpack-RPC lets a server call its client; this client serves no
        # methods but answers, so that such a call does not hang.
        data = self._protocol.response(
            msgid, [str(RpcErrorCode.UNKNOWN_METHOD), "this client serves no methods"], None
        )
        try:
            await self._send(data, math.inf)
        except ConnectionLost:
            pass

    # -- closing ------------------------------------------------------------

    def _set_lost(self, reason: ConnectionLost) -> None:
        # The first reason wins: the later ones are consequences of it.
        if self._lost is None:
            self._lost = reason

    def _connection_lost(self) -> ConnectionLost:
        assert self._lost is not None
        return ConnectionLost(self._lost.message, self._lost.code)

    async def aclose(self) -> None:
        """Close the connection; pending and later calls raise `ConnectionLost`.

        Safe to call more than once and from a cancelled scope.
        """
        with anyio.CancelScope(shield=True):
            if self._closing:
                if self._reader_started:
                    await self._reader_done.wait()
                return
            self._closing = True
            self._set_lost(ConnectionLost("the client closed the connection"))
            # The reader stops first: a graceful TLS close reads the stream too.
            # (A reader cancelled before it ever ran never sets the event.)
            self._reader_scope.cancel()
            if self._reader_started:
                await self._reader_done.wait()
            closed = False
            with anyio.move_on_after(CLOSE_TIMEOUT):
                try:
                    # The lock lets a write in progress finish: a TLS close
                    # writes too, and two writers may not share the socket.
                    async with self._send_lock:
                        await self._stream.aclose()
                    closed = True
                except _STREAM_ERRORS:
                    pass
            if not closed:
                await anyio.aclose_forcefully(self._stream)
            self._fail_pending()
            self._notify_receive.close()
