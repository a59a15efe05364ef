"""The websocket gateway for phones: /v1/device.

It negotiates the subprotocol, runs the pre-authentication part of the
protocol (enroll, hello) itself, and then hands the connection to the
device's actor as a `DeviceLink`. Each connection has a bounded outbound
queue drained by its own writer task, so a slow phone never stalls an actor:
when its queue is full it is cut off with 4429. A phone that sends garbage
gets `error` frames, then 1008; it costs the node a debug line, nothing more.
"""

from __future__ import annotations

import itertools
import logging
from functools import partial

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from actors.messages import Attach, Detach, FromPhone
from actors.registry import ActorRegistry
from engine.clock import Clock
from engine.config import Config
from engine.enrollment import EnrollmentService
from engine.errors import (
    CLOSE_AUTH_FAILED,
    CLOSE_GOING_AWAY,
    CLOSE_HELLO_TIMEOUT,
    CLOSE_INTERNAL,
    CLOSE_POLICY,
    CLOSE_REVOKED,
    CLOSE_SLOW,
    CLOSE_TRY_AGAIN,
    DeviceError,
    DeviceErrorCode,
)
from engine.protocol.device import (
    SUBPROTOCOLS,
    DeviceCodec,
    DeviceSession,
    Enroll,
    Enrolled,
    Hello,
    Revoked,
    ServerMessage,
)
from engine.stats import NodeStats
from engine.store.base import Store
from engine.tls import server_context
from engine.tokens import DeviceTokenVerifier, TokenRejected, unverified_subject

log = logging.getLogger(__name__)

DEVICE_PATH = "/v1/device"
# trio-websocket closes with 1009 above this; frames between 64 KiB and this
# size are read and answered with a too_large error frame instead.
WIRE_MESSAGE_LIMIT = 1 << 20
CLOSE_FLUSH_S = 2.0
CLOSE_ABORT_S = 0.1
_conn_ids = itertools.count(1)


class _Hangup(Exception):
    """The node ends this connection (its close code is already chosen)."""


class DeviceConnection:
    """One phone's websocket: the node's `DeviceLink` once authenticated."""

    def __init__(self, ws: WebSocketConnection, codec: DeviceCodec, queue_size: int, stats: NodeStats):
        self.conn_id = f"c{next(_conn_ids)}"
        self.device_id = ""
        self.ws = ws
        self.codec = codec
        self._stats = stats
        self._out_send, self._out_receive = trio.open_memory_channel[bytes | str](queue_size)
        self._close: tuple[int, str] | None = None
        self._writer_scope = trio.CancelScope()
        self._abort = False  # the peer is stuck or dead: do not wait for its close handshake
        self.closed = trio.Event()

    def send(self, message: ServerMessage) -> bool:
        return self.send_encoded(self.codec.encode(message))

    def send_encoded(self, payload: bytes | str) -> bool:
        if self._close is not None:
            return False
        try:
            self._out_send.send_nowait(payload)
            return True
        except trio.WouldBlock:
            self._stats.incr("slow_phone_disconnects")
            self.close(CLOSE_SLOW, "outbound queue full", flush=False)
            return False

    def close(self, code: int, reason: str = "", *, flush: bool = True) -> None:
        """Close after the queued frames are written (or at once, without flush)."""
        if self._close is not None:
            return
        self._close = (code, reason)
        self._out_send.close()
        if not flush:
            self._abort = True
            self._writer_scope.cancel()

    async def write_loop(self) -> None:
        """Write queued frames in order; then close the websocket with the chosen code."""
        with self._writer_scope:
            try:
                async for payload in self._out_receive:
                    await self.ws.send_message(payload)
            except ConnectionClosed:
                pass
        code, reason = self._close or (CLOSE_GOING_AWAY, "")
        with trio.move_on_after(CLOSE_ABORT_S if self._abort else CLOSE_FLUSH_S):
            await self.ws.aclose(code, reason)
        self.closed.set()


class DeviceGateway:
    def __init__(
        self,
        config: Config,
        enrollment: EnrollmentService,
        registry: ActorRegistry,
        verifier: DeviceTokenVerifier,
        store: Store,
        stats: NodeStats,
        clock: Clock,
        max_connections: int,
    ):
        self._config = config
        self._enrollment = enrollment
        self._registry = registry
        self._verifier = verifier
        self._store = store
        self._stats = stats
        self._clock = clock
        self.max_connections = max_connections
        self.connections: set[DeviceConnection] = set()
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listener = self._config.ws
        async with trio.open_nursery() as handlers:
            server = await handlers.start(partial(
                serve_websocket, self._handle, listener.host, listener.port, server_context(listener),
                handler_nursery=handlers, message_queue_size=4, max_message_size=WIRE_MESSAGE_LIMIT,
                connect_timeout=self._config.hello_timeout_s, disconnect_timeout=CLOSE_FLUSH_S))
            self.port = server.port
            task_status.started(self.port)

    async def close_all(self, timeout_s: float = 5.0) -> None:
        """Close every phone's socket with 1001 after flushing its queued frames."""
        for conn in list(self.connections):
            conn.close(CLOSE_GOING_AWAY, "node shutting down")
        with trio.move_on_after(timeout_s):
            for conn in list(self.connections):
                await conn.closed.wait()

    async def _handle(self, request: WebSocketRequest) -> None:
        if request.path != DEVICE_PATH:
            await request.reject(404, body=b"unknown path; phones connect to /v1/device\n")
            return
        subprotocol = next((p for p in request.proposed_subprotocols if p in SUBPROTOCOLS), None)
        if subprotocol is None:
            await request.reject(
                400, body=f"offer one of the subprotocols {', '.join(SUBPROTOCOLS)}\n".encode())
            return
        ws = await request.accept(subprotocol=subprotocol)
        if len(self.connections) >= self.max_connections:
            self._stats.incr("connections_refused")
            with trio.move_on_after(CLOSE_FLUSH_S):
                await ws.aclose(CLOSE_TRY_AGAIN, "node at its connection limit")
            return
        conn = DeviceConnection(ws, DeviceCodec(subprotocol), self._config.outbound_queue, self._stats)
        self.connections.add(conn)
        attached = False
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn.write_loop)
                try:
                    await self._serve_phone(conn, nursery)
                except (ConnectionClosed, _Hangup):
                    pass
                except Exception:
                    log.exception("device connection %s failed", conn.conn_id)
                    conn.close(CLOSE_INTERNAL, "internal error", flush=False)
                attached = bool(conn.device_id)
                conn.close(CLOSE_GOING_AWAY)
                await conn.closed.wait()
                nursery.cancel_scope.cancel()
        finally:
            self.connections.discard(conn)
            if attached:
                with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_FLUSH_S):
                    await self._registry.send(conn.device_id, Detach(conn))

    async def _serve_phone(self, conn: DeviceConnection, nursery: trio.Nursery) -> None:
        """Run the protocol on one connection; `conn.device_id` is set once it is
        attached to its actor."""
        session = DeviceSession(conn.codec)
        with trio.move_on_after(self._config.hello_timeout_s) as hello_scope:
            while not session.authenticated:
                message = await self._receive(conn, session)
                if message is None:
                    continue
                if not await self._pre_auth(conn, session, message):
                    return
        if hello_scope.cancelled_caught:
            conn.close(CLOSE_HELLO_TIMEOUT, "no hello in time")
            return
        conn.device_id = session.device_id or ""
        nursery.start_soon(self._heartbeat, conn)
        await self._registry.send(conn.device_id, Attach(conn))
        while True:
            message = await self._receive(conn, session)
            if message is not None:
                await self._registry.send(conn.device_id, FromPhone(conn, message))

    async def _receive(self, conn: DeviceConnection, session: DeviceSession):
        """The next valid frame, or None after answering an invalid one."""
        data = await conn.ws.get_message()
        try:
            return session.receive(data)
        except DeviceError as err:
            log.debug("connection %s sent a bad frame: %s", conn.conn_id, err)
            self._stats.incr("bad_frames")
            payload, must_close = session.error_frame(err)
            conn.send_encoded(payload)
            if must_close:
                conn.close(CLOSE_POLICY, "too many protocol errors")
                raise _Hangup from None
            return None

    async def _pre_auth(self, conn: DeviceConnection, session: DeviceSession, message) -> bool:
        """Handle enroll or hello; False when the connection must end."""
        match message:
            case Enroll():
                try:
                    device = await self._enrollment.complete(message)
                except DeviceError as err:
                    payload, must_close = session.error_frame(err)
                    conn.send_encoded(payload)
                    if must_close:
                        conn.close(CLOSE_POLICY, "too many protocol errors")
                    return not must_close
                conn.send(Enrolled(device_id=device.device_id, account=device.user_id,
                                   audience=self._config.audience))
                return True
            case Hello(token=token):
                try:
                    device_id = unverified_subject(token)
                    device = await self._store.get_device(device_id)
                    if device is None:
                        raise TokenRejected("unknown device")
                    await self._verifier.verify_hello(token, device_id, device.public_key)
                except TokenRejected as exc:
                    log.debug("connection %s failed hello: %s", conn.conn_id, exc)
                    self._stats.incr("auth_failures")
                    payload, _ = session.error_frame(DeviceError(DeviceErrorCode.AUTH_FAILED))
                    conn.send_encoded(payload)
                    conn.close(CLOSE_AUTH_FAILED, "authentication failed")
                    return False
                if not device.active:
                    # The key proved it is that phone: tell it why, so the app
                    # can ask its user to enroll again instead of retrying.
                    self._stats.incr("revoked_hellos")
                    conn.send(Revoked(reason="device revoked"))
                    conn.close(CLOSE_REVOKED, "device revoked")
                    return False
                session.authenticate(device_id)
                return True
        return True

    async def _heartbeat(self, conn: DeviceConnection) -> None:
        while True:
            await trio.sleep(self._config.heartbeat_s)
            with trio.move_on_after(self._config.heartbeat_timeout_s) as scope:
                try:
                    await conn.ws.ping()
                except ConnectionClosed:
                    return
            if scope.cancelled_caught:
                self._stats.incr("heartbeat_timeouts")
                log.debug("connection %s missed its heartbeat", conn.conn_id)
                conn.close(CLOSE_INTERNAL, "heartbeat timeout", flush=False)
                return
