"""The websocket gateway for phones: /v1/device.

It negotiates the subprotocol, runs the pre-authentication part of the
protocol (enroll, hello) itself, and then hands the connection to the
device's actor as a `DeviceLink`. One task per phone reads its socket and
parses frames inline (engine/websocket.py); one task pings them all
(engine/heartbeat.py); the actor sends straight to the socket. A phone that
does not take a frame within `send_timeout_s` is cut off with 4429, so a
slow phone holds up nothing but its own actor, briefly. A phone that sends
garbage gets `error` frames, then 1008; it costs the node a debug line,
nothing more.
"""

from __future__ import annotations

import itertools
import logging
from functools import partial

import trio

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
from engine.heartbeat import Beating, Heartbeat
from engine.models import Device
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
from engine.tls import open_listeners
from engine.tokens import DeviceTokenVerifier, TokenRejected, unverified_subject
from engine.websocket import HandshakeRequest, SendTimeout, ServerWebsocket, Verdict, WebsocketClosed, accept

log = logging.getLogger(__name__)

DEVICE_PATH = "/v1/device"
# Messages up to this size are read and answered with a too_large error frame
# (the protocol's limit is 64 KiB); larger ones close the socket with 1009.
WIRE_MESSAGE_LIMIT = 1 << 20
CLOSE_FLUSH_S = 2.0
_conn_ids = itertools.count(1)


class DeviceConnection:
    """One phone's websocket: the node's `DeviceLink` once authenticated."""

    def __init__(self, ws: ServerWebsocket, codec: DeviceCodec, stats: NodeStats, send_timeout_s: float):
        self.conn_id = f"c{next(_conn_ids)}"
        self.device_id = ""
        self.ws = ws
        self.codec = codec
        self._stats = stats
        self._send_timeout_s = send_timeout_s
        self.session = DeviceSession(codec)
        self.device: Device | None = None  # the record the hello was verified against
        self.close_request: tuple[int, str, bool] | None = None  # code, reason, flush
        self.closed = trio.Event()

    async def send(self, *messages: ServerMessage) -> bool:
        """Send frames, in one write; False if the connection is closing or the
        phone is too slow (it is then being cut off with 4429)."""
        return await self.send_encoded(*[self.codec.encode(m) for m in messages])

    async def send_encoded(self, *payloads: bytes | str) -> bool:
        if self.close_request is not None:
            return False
        try:
            await self.ws.send_messages(list(payloads), self._send_timeout_s)
            return True
        except SendTimeout:
            self._stats.incr("slow_phone_disconnects")
            self.close(CLOSE_SLOW, "too slow to read", flush=False)
        except WebsocketClosed:
            pass
        return False

    @property
    def ending(self) -> bool:
        """Asked to close, or closed."""
        return self.close_request is not None or self.closed.is_set()

    def close(self, code: int, reason: str = "", *, flush: bool = True) -> None:
        """Have the connection's reader close the socket with `code`: after a close
        handshake of at most CLOSE_FLUSH_S, or at once without flush."""
        if self.close_request is None:
            self.close_request = (code, reason, flush)
            self.ws.interrupt()


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
        self.heartbeat = Heartbeat(config.heartbeat_s, config.heartbeat_timeout_s, self._missed_heartbeat)
        self._handshakes = 0
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners, self.port = await open_listeners(self._config.ws)
        async with trio.open_nursery() as nursery:
            await nursery.start(self.heartbeat.run)
            await nursery.start(partial(trio.serve_listeners, self._handle, listeners, handler_nursery=nursery))
            task_status.started(self.port)

    async def close_all(self, timeout_s: float = 5.0) -> None:
        """Close every phone's socket with 1001 (after a close handshake)."""
        for conn in list(self.connections):
            conn.close(CLOSE_GOING_AWAY, "node shutting down")
        with trio.move_on_after(timeout_s):
            for conn in list(self.connections):
                await conn.closed.wait()

    # -- one phone --------------------------------------------------------------------
    async def _handle(self, stream: trio.abc.Stream) -> None:
        try:
            ws = None
            with trio.move_on_after(self._config.hello_timeout_s):  # for the handshake (and TLS)
                ws = await accept(stream, self._decide, max_message=WIRE_MESSAGE_LIMIT)
            if ws is not None:
                await self._connected(ws)
        except WebsocketClosed:
            pass
        finally:
            await trio.aclose_forcefully(stream)

    def _decide(self, request: HandshakeRequest) -> Verdict:
        if request.path != DEVICE_PATH:
            return 404, b"unknown path; phones connect to /v1/device\n"
        subprotocol = next((p for p in request.subprotocols if p in SUBPROTOCOLS), None)
        if subprotocol is None:
            return 400, f"offer one of the subprotocols {', '.join(SUBPROTOCOLS)}\n".encode()
        return subprotocol

    async def _connected(self, ws: ServerWebsocket) -> None:
        if len(self.connections) >= self.max_connections:
            self._stats.incr("connections_refused")
            await ws.close(CLOSE_TRY_AGAIN, "node at its connection limit", timeout_s=CLOSE_FLUSH_S)
            return
        conn = DeviceConnection(ws, DeviceCodec(ws.subprotocol), self._stats, self._config.send_timeout_s)
        self.connections.add(conn)
        try:
            with trio.CancelScope(deadline=trio.current_time() + self._config.hello_timeout_s) as hello:
                authenticated = await self._authenticate(conn)
            if hello.cancelled_caught:
                conn.close(CLOSE_HELLO_TIMEOUT, "no hello in time")
            elif authenticated:
                await self._serve_phone(conn)
        except WebsocketClosed:
            pass
        except Exception:
            log.exception("device connection %s failed", conn.conn_id)
            conn.close(CLOSE_INTERNAL, "internal error", flush=False)
        finally:
            code, reason, flush = conn.close_request or (CLOSE_GOING_AWAY, "", True)
            with trio.CancelScope(shield=True):
                await ws.close(code, reason, timeout_s=CLOSE_FLUSH_S if flush else 0)
                conn.closed.set()
                self.connections.discard(conn)
                if conn.device_id:
                    with trio.move_on_after(CLOSE_FLUSH_S):
                        await self._registry.send(conn.device_id, Detach(conn))

    async def _authenticate(self, conn: DeviceConnection) -> bool:
        """Enroll and hello; True once the phone is authenticated and attached."""
        session = conn.session
        while not session.authenticated:
            message = await self._next(conn, session)
            if conn.close_request is not None:
                return False
            if message is not None and not await self._pre_auth(conn, session, message):
                return False
        conn.device_id = session.device_id or ""
        await self._registry.send(conn.device_id, Attach(conn, conn.device))
        return True

    async def _serve_phone(self, conn: DeviceConnection) -> None:
        """Read the phone's frames for its actor until the end; `heartbeat` pings it."""
        session = conn.session
        self.heartbeat.watch(conn)
        while conn.close_request is None:
            message = await self._next(conn, session)
            if message is not None:
                await self._registry.send(conn.device_id, FromPhone(conn, message))

    def _missed_heartbeat(self, conn: Beating) -> None:
        assert isinstance(conn, DeviceConnection)
        self._stats.incr("heartbeat_timeouts")
        log.debug("connection %s missed its heartbeat", conn.conn_id)
        conn.close(CLOSE_INTERNAL, "heartbeat timeout", flush=False)

    async def _next(self, conn: DeviceConnection, session: DeviceSession):
        """The next valid frame; None after answering an invalid one, or when
        the connection is to close."""
        data = await conn.ws.receive()
        if data is None:
            return None
        try:
            return session.receive(data)
        except DeviceError as err:
            log.debug("connection %s sent a bad frame: %s", conn.conn_id, err)
            self._stats.incr("bad_frames")
            payload, must_close = session.error_frame(err)
            await conn.send_encoded(payload)
            if must_close:
                conn.close(CLOSE_POLICY, "too many protocol errors")
            return None

    async def _pre_auth(self, conn: DeviceConnection, session: DeviceSession, message) -> bool:
        """Handle enroll or hello; False when the connection must end."""
        match message:
            case Enroll():
                try:
                    device = await self._enrollment.complete(message)
                except DeviceError as err:
                    payload, must_close = session.error_frame(err)
                    await conn.send_encoded(payload)
                    if must_close:
                        conn.close(CLOSE_POLICY, "too many protocol errors")
                    return not must_close
                await conn.send(Enrolled(device_id=device.device_id, account=device.user_id,
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
                    await conn.send_encoded(payload)
                    conn.close(CLOSE_AUTH_FAILED, "authentication failed")
                    return False
                if not device.active:
                    # The key proved it is that phone: tell it why, so the app
                    # can ask its user to enroll again instead of retrying.
                    self._stats.incr("revoked_hellos")
                    await conn.send(Revoked(reason="device revoked"))
                    conn.close(CLOSE_REVOKED, "device revoked")
                    return False
                session.authenticate(device_id)
                conn.device = device
                return True
        return True
