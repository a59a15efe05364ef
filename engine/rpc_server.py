"""The msgpack-RPC server for backends and operators (plain TCP or TLS).

Per connection: a reader that feeds the sans-I/O framing, one task per
request (pipelined requests run concurrently and may be answered out of
order; at most `rpc_max_inflight` at once, after which reading pauses), and
one writer that owns the socket's send side. `auth` is answered inline, so
requests pipelined behind it see its result. A subscriber to events gets
notifications through the same writer; if it reads too slowly, the event bus
cuts it off (counted) and it is told so with an `events.cut_off` notification.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import trio

from engine.backend_api import BackendApi, RpcSession
from engine.config import Config
from engine.errors import RpcError, RpcErrorCode
from engine.events import ALL_EVENTS_TOPIC
from engine.protocol.rpc import Notification, Request, Response, RpcConnection, RpcFramingError
from engine.stats import NodeStats
from engine.state.base import EventBus
from engine.tls import open_listeners

log = logging.getLogger(__name__)

RECEIVE_CHUNK = 65536
OUTBOUND_QUEUE = 1024
COALESCE_BYTES = 256 * 1024
# After a fatal framing error the node reads and discards for this long before
# closing: closing with unread bytes makes the kernel send a reset, which can
# destroy the error notice before the peer reads it.
LINGER_S = 1.0


class RpcServer:
    def __init__(self, config: Config, api: BackendApi, bus: EventBus, stats: NodeStats):
        self._config = config
        self._api = api
        self._bus = bus
        self._stats = stats
        self.port = 0
        self.connections = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners, self.port = await open_listeners(self._config.rpc)
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(trio.serve_listeners, self._handle, listeners, handler_nursery=nursery))
            task_status.started(self.port)

    async def _handle(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        try:
            await _RpcPeer(self, stream).run()
        except Exception:
            # One connection's failure is logged and ends that connection only.
            log.exception("rpc connection failed")
            self._stats.incr("rpc_connection_failures")
        finally:
            self.connections -= 1
            with trio.move_on_after(1):
                await stream.aclose()


class _RpcPeer:
    """One backend connection."""

    def __init__(self, server: RpcServer, stream: trio.abc.Stream):
        self._server = server
        self._stream = stream
        self._framing = RpcConnection()
        self._out_send, self._out_receive = trio.open_memory_channel[bytes](OUTBOUND_QUEUE)
        self._inflight = trio.Semaphore(server._config.rpc_max_inflight)
        self._session = RpcSession(subscribe=self._subscribe)
        self._nursery: trio.Nursery | None = None
        self._subscribed = False
        self._hung_up = False  # a fatal framing error: the node ends the connection

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._write_loop)
            try:
                await self._read_loop()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            # The peer hung up, or must be hung up on after a fatal framing
            # error: give the writer a moment to send what is queued.
            self._out_send.close()
            nursery.cancel_scope.deadline = trio.current_time() + 1
        if self._hung_up:
            await self._linger()
        self._session.subscribe = None  # the bound method made a reference cycle with this peer

    async def _linger(self) -> None:
        """Half-close, then discard what the peer still sends, for at most LINGER_S."""
        with trio.move_on_after(LINGER_S):
            try:
                if isinstance(self._stream, trio.SocketStream):
                    await self._stream.send_eof()
                while await self._stream.receive_some(RECEIVE_CHUNK):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _read_loop(self) -> None:
        while True:
            data = await self._stream.receive_some(RECEIVE_CHUNK)
            if not data:
                return
            self._framing.receive_data(data)
            while True:
                try:
                    message = self._framing.next_event()
                except RpcFramingError as err:
                    self._server._stats.incr("rpc_bad_messages")
                    log.debug("rpc peer sent a bad message: %s", err)
                    await self._out_send.send(self._framing.error_reply(err))
                    if err.fatal:
                        self._hung_up = True
                        return
                    continue
                if message is None:
                    break
                await self._dispatch(message)

    async def _dispatch(self, message: Any) -> None:
        match message:
            case Request(msgid=msgid, method="auth", params=params):
                try:
                    result = self._server._api.authenticate(self._session, params)
                    await self._out_send.send(self._framing.response(msgid, None, result))
                except RpcError as err:
                    await self._out_send.send(self._framing.response(msgid, err.to_wire(), None))
            case Request():
                await self._inflight.acquire()
                assert self._nursery is not None
                self._nursery.start_soon(self._run_request, message)
            case Notification() | Response():
                log.debug("rpc peer sent an unexpected %s; ignored", type(message).__name__)

    async def _run_request(self, request: Request) -> None:
        try:
            try:
                result = await self._server._api.call(self._session, request.method, request.params)
                reply = self._framing.response(request.msgid, None, result)
            except RpcError as err:
                reply = self._framing.response(request.msgid, err.to_wire(), None)
            except Exception:
                log.exception("rpc method %s failed", request.method)
                self._server._stats.incr("rpc_internal_errors")
                reply = self._framing.response(request.msgid, RpcError(RpcErrorCode.INTERNAL).to_wire(), None)
            try:
                await self._out_send.send(reply)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass
        finally:
            self._inflight.release()

    async def _write_loop(self) -> None:
        try:
            async for payload in self._out_receive:
                # Whatever else is queued goes in the same send: one syscall for
                # many answers when requests are pipelined.
                chunks = [payload]
                size = len(payload)
                while size < COALESCE_BYTES:
                    try:
                        chunks.append(self._out_receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    size += len(chunks[-1])
                await self._stream.send_all(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        # The writer is gone: nothing more can be said, so stop reading too.
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()

    async def _subscribe(self, kinds: list[str]) -> None:
        if self._subscribed:
            raise RpcError(RpcErrorCode.INVALID_PARAMS, "this connection is already subscribed")
        self._subscribed = True
        assert self._nursery is not None
        await self._nursery.start(self._forward_events, kinds)

    async def _forward_events(self, kinds: list[str], *, task_status: trio.TaskStatus[None]) -> None:
        bus = self._server._bus
        async with bus.subscribe([ALL_EVENTS_TOPIC], buffer=self._server._config.event_buffer) as events:
            task_status.started()
            async for _topic, event in events:
                kind = event.get("kind", "")
                if kinds and not any(kind == k or (k.endswith(".") and kind.startswith(k)) for k in kinds):
                    continue
                try:
                    await self._out_send.send(self._framing.notification("event", [event]))
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    return
            if events.overflowed:
                self._server._stats.incr("subscribers_cut_off")
                self._subscribed = False
                try:
                    self._out_send.send_nowait(self._framing.notification(
                        "events.cut_off", [{"reason": "subscriber too slow", "buffer": self._server._config.event_buffer}]))
                except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                    pass
