"""Server websockets for many idle phones: wsproto over one Trio stream, no helper tasks.

trio-websocket gives every connection a reader task, a message channel and
several events, and sends through a lock and a writer; with 19,000 phones
that is most of a node's memory, and every frame costs a few task switches.
Here a connection is an object and no task of its own: the task that reads
(the gateway's handler for that phone) parses frames inline, answers pings
and notes pongs; any task may send (pings too), under a lock,
straight to the socket, and a send that cannot finish in time marks the
peer as too slow. wsproto does the protocol (RFC 6455 framing, the h11
handshake); this module only moves its bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

RECEIVE_BYTES = 65536
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_PROTOCOL_ERROR = 1002


class WebsocketClosed(Exception):
    """The connection is over: the peer closed it, it broke, or we closed it."""

    def __init__(self, code: int | None, reason: str = ""):
        self.code = code
        self.reason = reason
        super().__init__(f"websocket closed: {code} {reason}".strip())


class SendTimeout(Exception):
    """The peer did not take a frame in time: it reads too slowly, or is gone."""


@dataclass(frozen=True, slots=True)
class HandshakeRequest:
    path: str
    subprotocols: tuple[str, ...]


# What the caller decides for a handshake: accept with this subprotocol, or
# reject with (HTTP status, body).
Verdict = str | tuple[int, bytes]


async def accept(stream: trio.abc.Stream, decide: Callable[[HandshakeRequest], Verdict], *,
                 max_message: int) -> ServerWebsocket | None:
    """Read the opening handshake and answer it; the websocket, or None if rejected.

    Raises:
        WebsocketClosed: the peer went away or sent no valid handshake.
    """
    handshake = WSConnection(ConnectionType.SERVER)
    request: Request | None = None
    while request is None:
        data = await _receive(stream)
        try:
            handshake.receive_data(data)
            request = next((e for e in handshake.events() if isinstance(e, Request)), None)
        except RemoteProtocolError as exc:
            await _send_quietly(stream, handshake.send(RejectConnection(status_code=400)) if
                                handshake.state is ConnectionState.CONNECTING else b"")
            raise WebsocketClosed(None, f"bad handshake: {exc}") from None
    verdict = decide(HandshakeRequest(request.target.split("?", 1)[0], tuple(request.subprotocols)))
    if not isinstance(verdict, str):
        status, body = verdict
        reply = handshake.send(RejectConnection(status_code=status, has_body=True,
                                                headers=[(b"content-type", b"text/plain")]))
        reply += handshake.send(RejectData(data=body))
        await _send_quietly(stream, reply)
        return None
    await _send_or_closed(stream, handshake.send(AcceptConnection(subprotocol=verdict)))
    assert handshake.connection is not None
    # Only the framing state is kept: the h11 handshake machinery goes.
    return ServerWebsocket(stream, handshake.connection, verdict, max_message)


class ServerWebsocket:
    def __init__(self, stream: trio.abc.Stream, connection: Connection, subprotocol: str, max_message: int):
        self.stream = stream
        self.subprotocol = subprotocol
        self._ws = connection
        self._max_message = max_message
        self._send_lock = trio.Lock()
        self._parts: list[str | bytes] = []
        self._size = 0
        self._pending: list[str | bytes] = []  # messages parsed but not yet returned
        self.closed: WebsocketClosed | None = None
        self.pong_due: float | None = None  # Trio time by which our ping must be answered
        self._receive_scope: trio.CancelScope | None = None
        self._interrupted = False

    # -- receiving (one task only: the connection's reader) -----------------------------
    async def receive(self) -> str | bytes | None:
        """The next message, or None if `interrupt` is called first.

        Pings are answered and pongs noted on the way.

        Raises:
            WebsocketClosed: the peer closed the connection, or it broke, or a
                message went over the size limit (closed with 1009).
        """
        while not self._pending:
            if self.closed is not None:
                raise self.closed
            if self._interrupted:
                self._interrupted = False
                return None
            data: bytes | None = None
            with trio.CancelScope() as self._receive_scope:
                data = await _receive(self.stream)
            self._receive_scope = None
            if data is None:
                return None
            await self._feed(data)
        return self._pending.pop(0)

    def interrupt(self) -> None:
        """Make the reader's `receive` return None now (another task wants it to look up)."""
        self._interrupted = True
        if self._receive_scope is not None:
            self._receive_scope.cancel()

    async def _feed(self, data: bytes) -> None:
        try:
            self._ws.receive_data(data)
            events = list(self._ws.events())
        except RemoteProtocolError as exc:
            await self._fail(CLOSE_PROTOCOL_ERROR, f"protocol error: {exc}")
            return
        for event in events:
            match event:
                case TextMessage() | BytesMessage():
                    self._size += len(event.data)
                    if self._size > self._max_message:
                        await self._fail(CLOSE_MESSAGE_TOO_BIG, "message too big")
                        return
                    self._parts.append(event.data)
                    if event.message_finished:
                        parts, self._parts, self._size = self._parts, [], 0
                        self._pending.append(parts[0] if len(parts) == 1 else
                                             ("" if isinstance(parts[0], str) else b"").join(parts))  # type: ignore[arg-type]
                case Ping():
                    await self._send_frame(event.response())
                case Pong():
                    self.pong_due = None
                case CloseConnection():
                    if self._ws.state is ConnectionState.REMOTE_CLOSING:
                        await self._send_frame(event.response())
                    await trio.aclose_forcefully(self.stream)
                    self.closed = WebsocketClosed(event.code, event.reason or "")
                    return

    async def _fail(self, code: int, reason: str) -> None:
        await self.close(code, reason, timeout_s=1.0)

    # -- sending (any task) ---------------------------------------------------------------
    async def send_messages(self, messages: list[str | bytes], timeout_s: float) -> None:
        """Send messages in one write, waiting at most `timeout_s` for the socket to take them.

        Raises:
            WebsocketClosed: the connection is over.
            SendTimeout: the peer is too slow; the connection should be dropped.
        """
        events = [TextMessage(data=m) if isinstance(m, str) else BytesMessage(data=m) for m in messages]
        with trio.move_on_after(timeout_s) as scope:
            await self._send_frame(*events)
        if scope.cancelled_caught:
            raise SendTimeout(f"the peer did not take a frame within {timeout_s} s")

    async def ping(self, timeout_s: float) -> None:
        """Send a ping; `pong_due` says when its answer is late."""
        self.pong_due = trio.current_time() + timeout_s
        with trio.move_on_after(timeout_s):
            await self._send_frame(Ping(payload=b"hb"))

    async def _send_frame(self, *events: Message | Ping | Pong | CloseConnection) -> None:
        async with self._send_lock:
            if self.closed is not None:
                raise self.closed
            try:
                data = b"".join([self._ws.send(event) for event in events])
            except LocalProtocolError:
                raise WebsocketClosed(None, "the connection is closing") from None
            await _send_or_closed(self.stream, data, on_error=self._broken)

    def _broken(self) -> None:
        if self.closed is None:
            self.closed = WebsocketClosed(1006, "connection lost")

    # -- closing ---------------------------------------------------------------------------
    async def close(self, code: int, reason: str = "", *, timeout_s: float) -> None:
        """Send a close frame and wait (at most `timeout_s`) for the peer's, then hang up.

        With timeout_s 0 the socket is closed at once (a dead or stuck peer).
        """
        if self.closed is None and timeout_s > 0 and self._ws.state is ConnectionState.OPEN:
            with trio.move_on_after(timeout_s):
                try:
                    await self._send_frame(CloseConnection(code=code, reason=reason))
                    # The peer's answering close frame; anything else is dropped.
                    while self._ws.state is not ConnectionState.CLOSED:
                        data = await _receive(self.stream)
                        self._ws.receive_data(data)
                        for _ in self._ws.events():
                            pass
                except (WebsocketClosed, RemoteProtocolError, LocalProtocolError):
                    pass
        if self.closed is None:
            self.closed = WebsocketClosed(code, reason)
        await trio.aclose_forcefully(self.stream)


async def _receive(stream: trio.abc.Stream) -> bytes:
    try:
        data = await stream.receive_some(RECEIVE_BYTES)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        raise WebsocketClosed(1006, "connection lost") from None
    if not data:
        raise WebsocketClosed(1006, "connection closed without a close frame")
    return data


async def _send_or_closed(stream: trio.abc.Stream, data: bytes, on_error: Callable[[], None] | None = None) -> None:
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        if on_error is not None:
            on_error()
        raise WebsocketClosed(1006, "connection lost") from None


async def _send_quietly(stream: trio.abc.Stream, data: bytes) -> None:
    if data:
        try:
            await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
