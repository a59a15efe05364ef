"""msgpack-RPC framing as a sans-I/O state machine: bytes in, messages out.

The wire format is plain msgpack-RPC, so generic clients (pynvim, Neovim,
msgpack-rpc-lite) can talk to a node:

    request       [0, msgid, method, params]
    response      [1, msgid, error, result]
    notification  [2, method, params]

msgid is an unsigned 32-bit integer, method a str, params an array. An error is
`[code, message]` or `[code, message, details]` with `code` from
`engine.errors.RpcErrorCode`; generic clients read element 1 as the message.
A connection may pipeline requests and the peer may answer out of order. One
message is at most `MAX_MESSAGE_BYTES` (1 MiB) of msgpack.

`RpcConnection` owns no socket: the caller feeds it received bytes with
`receive_data`, takes messages with `next_event`, and writes whatever bytes the
encoders return. The same class serves the node and the client.

Framing-error policy. `next_event` raises `RpcFramingError` when the peer sent
something that is not a valid message. What a server sends back depends on
the error, and `RpcConnection.error_reply` encodes it:

* Non-fatal (`fatal` is False): a well-formed msgpack value that is not a
  valid message (wrong arity or types, unknown type, msgid outside uint32,
  params not an array, method not a str). The byte stream is still in step, so
  the server answers and keeps reading. If element 1 held a valid msgid (any
  message but a notification), it answers `[1, msgid, [code, message], nil]`;
  otherwise there is no request to answer, and it sends the notification
  `[2, "error", [[code, message]]]`.
* Fatal (`fatal` is True): the stream cannot be trusted any more (undecodable
  msgpack, invalid UTF-8, a map key Python cannot hash, a message over the
  limit). The server sends `[2, "error", [[code, message]]]` once and closes
  the connection. It does not send a response with a made-up msgid such as 0:
  that could match, and wrongly complete, a real pending request of the peer.
  Messages that arrived complete before the bad bytes are still returned
  first; after the fatal error every call to `next_event` raises it again.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

import msgpack

from engine.errors import RpcError, RpcErrorCode

READ_SIZE = 64 * 1024
MAX_MESSAGE_BYTES = 1 << 20
MAX_MSGID = 2**32 - 1
ERROR_NOTIFICATION = "error"  # method of the notification that carries a framing error

REQUEST, RESPONSE, NOTIFICATION = 0, 1, 2


def _is_int(value: object) -> bool:
    # msgpack booleans decode to bool, a subclass of int; true is not a msgid.
    return isinstance(value, int) and not isinstance(value, bool)


def _check_msgid(msgid: object) -> None:
    if not _is_int(msgid):
        raise TypeError("msgid must be an integer")
    if not 0 <= msgid <= MAX_MSGID:
        raise ValueError("msgid must be an unsigned 32-bit integer")


def _check_method(method: object) -> None:
    if not isinstance(method, str):
        raise TypeError("method must be a string")


def _check_params(params: object) -> None:
    if not isinstance(params, list):
        raise TypeError("params must be an array")


@dataclass(frozen=True, slots=True)
class RpcMessage:
    """Base of the three msgpack-RPC messages; dispatch on them with `match`."""


@dataclass(frozen=True, slots=True)
class Request(RpcMessage):
    """`[0, msgid, method, params]`: a call the peer answers with a `Response`.

    Raises:
        TypeError, ValueError: a field has the wrong type or range.
    """

    msgid: int
    method: str
    params: list

    def __post_init__(self) -> None:
        _check_msgid(self.msgid)
        _check_method(self.method)
        _check_params(self.params)


@dataclass(frozen=True, slots=True)
class Response(RpcMessage):
    """`[1, msgid, error, result]`: the answer to the request with the same msgid.

    `error` is None on success; otherwise it is normally `[code, message]` or
    `[code, message, details]` and `result` is None.

    Raises:
        TypeError, ValueError: msgid is not an unsigned 32-bit integer.
    """

    msgid: int
    error: Any
    result: Any

    def __post_init__(self) -> None:
        _check_msgid(self.msgid)


@dataclass(frozen=True, slots=True)
class Notification(RpcMessage):
    """`[2, method, params]`: a one-way message that gets no answer.

    Raises:
        TypeError: method is not a str or params not a list.
    """

    method: str
    params: list

    def __post_init__(self) -> None:
        _check_method(self.method)
        _check_params(self.params)


class RpcFramingError(Exception):
    """The peer sent bytes that are not a valid msgpack-RPC message.

    Attributes:
        code: `INVALID_REQUEST`, or `TOO_LARGE` for a message over the limit.
        message: a short human-readable reason, safe to send to the peer.
        msgid: the msgid recovered from the bad message, if it had a valid one.
        fatal: True when the byte stream can no longer be trusted and the
            connection must close; see the module docstring for the replies.
    """

    def __init__(self, code: RpcErrorCode, message: str, *, msgid: int | None = None, fatal: bool = False):
        self.code = RpcErrorCode(code)
        self.message = message
        self.msgid = msgid
        self.fatal = fatal
        super().__init__(f"{self.code}: {message}")

    def to_wire(self) -> list:
        """The error array `[code, message]` to send to the peer."""
        return [str(self.code), self.message]


def _recover_msgid(value: list) -> int | None:
    """Element 1 if it is a valid msgid and the message is not a notification."""
    if len(value) < 2 or (_is_int(value[0]) and value[0] == NOTIFICATION):
        return None
    candidate = value[1]
    if _is_int(candidate) and 0 <= candidate <= MAX_MSGID:
        return candidate
    return None


def _to_message(value: Any) -> RpcMessage | RpcFramingError:
    """Validate one decoded msgpack value as a message; never raises."""
    if not isinstance(value, list) or not value:
        return RpcFramingError(RpcErrorCode.INVALID_REQUEST, "a message must be a non-empty array")
    msgid = _recover_msgid(value)
    kind = value[0]
    try:
        if not _is_int(kind) or kind not in (REQUEST, RESPONSE, NOTIFICATION):
            raise ValueError(f"unknown message type {kind!r}; expected 0, 1 or 2")
        if kind == NOTIFICATION:
            if len(value) != 3:
                raise ValueError("a notification is an array of 3 elements")
            return Notification(value[1], value[2])
        if len(value) != 4:
            raise ValueError(f"a {'request' if kind == REQUEST else 'response'} is an array of 4 elements")
        if kind == REQUEST:
            return Request(value[1], value[2], value[3])
        return Response(value[1], value[2], value[3])
    except (TypeError, ValueError) as exc:
        return RpcFramingError(RpcErrorCode.INVALID_REQUEST, str(exc), msgid=msgid)


class RpcConnection:
    """One side of a msgpack-RPC byte stream: decodes what arrives, encodes what leaves.

    Args:
        max_message_bytes: the largest message accepted or produced, in bytes
            of msgpack.
    """

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES):
        if max_message_bytes < 1:
            raise ValueError("max_message_bytes must be positive")
        self.max_message_bytes = max_message_bytes
        # The decoder buffer holds bytes not yet decoded. receive_data feeds it
        # only as much as fits, so pipelined input never overflows it, and one
        # byte over the message limit is room enough to see that a message is
        # too large. The derived max_str_len, max_bin_len, max_array_len and
        # friends follow this bound as well.
        self._max_buffer = max_message_bytes + 1
        self._unpacker = msgpack.Unpacker(
            raw=False,
            max_buffer_size=self._max_buffer,
            # The buffer starts this small and grows to max_buffer_size only when a
            # big message needs it (the default allocates 1 MiB per connection).
            read_size=min(READ_SIZE, self._max_buffer),
            strict_map_key=False,
        )
        self._fed = 0  # bytes given to the unpacker so far
        self._message_start = 0  # stream offset where the current message began
        self._ready: collections.deque[RpcMessage | RpcFramingError] = collections.deque()
        self._fatal: tuple[RpcErrorCode, str] | None = None

    # -- decoding -----------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Take bytes received from the peer, in chunks of any size.

        The chunk is fed to the decoder in pieces no larger than the room left
        in its buffer, and every complete message is set aside for
        `next_event`, so a large chunk of many small pipelined messages is
        fine while a single message over the limit is caught after at most
        `max_message_bytes + 1` of its bytes, whatever length it declares.
        Bytes after a fatal error are ignored.
        """
        view = memoryview(data)
        while view and self._fatal is None:
            room = self._max_buffer - (self._fed - self._unpacker.tell())
            piece, view = view[:room], view[room:]
            try:
                self._unpacker.feed(piece)
            except msgpack.BufferFull:  # unreachable while the size check holds
                self._fail(RpcErrorCode.TOO_LARGE, "message over the size limit")
                return
            self._fed += len(piece)
            self._decode_available()

    def _decode_available(self) -> None:
        while self._fatal is None:
            try:
                value = self._unpacker.unpack()
            except msgpack.OutOfData:
                if self._fed - self._message_start > self.max_message_bytes:
                    self._fail(RpcErrorCode.TOO_LARGE, self._too_large_text())
                return
            except Exception as exc:  # any decoder failure is the peer's garbage
                # Undecodable bytes, invalid UTF-8, unhashable map keys, bad
                # timestamps, nesting too deep: the decoder's position is no
                # longer a message boundary, so nothing after this is trusted.
                self._fail(RpcErrorCode.INVALID_REQUEST, f"undecodable msgpack ({type(exc).__name__})")
                return
            end = self._unpacker.tell()
            size, self._message_start = end - self._message_start, end
            if size > self.max_message_bytes:
                self._fail(RpcErrorCode.TOO_LARGE, self._too_large_text())
                return
            self._ready.append(_to_message(value))

    def _too_large_text(self) -> str:
        return f"message over {self.max_message_bytes} bytes"

    def _fail(self, code: RpcErrorCode, message: str) -> None:
        self._fatal = (code, message)

    def next_event(self) -> RpcMessage | None:
        """The next message from the peer, or None if more bytes are needed.

        Raises:
            RpcFramingError: the next thing in the stream is not a valid
                message. Non-fatal errors are raised once and decoding goes
                on with the next message; a fatal one is raised by this and
                every later call.
        """
        if self._ready:
            item = self._ready.popleft()
            if isinstance(item, RpcFramingError):
                raise item
            return item
        if self._fatal is not None:
            code, message = self._fatal
            raise RpcFramingError(code, message, fatal=True)
        return None

    # -- encoding -----------------------------------------------------------

    def _pack(self, value: list) -> bytes:
        data = msgpack.packb(value, use_bin_type=True)
        if len(data) > self.max_message_bytes:
            raise ValueError(f"encoded message is {len(data)} bytes; the limit is {self.max_message_bytes}")
        return data

    def request(self, msgid: int, method: str, params: list) -> bytes:
        """Encode `[0, msgid, method, params]`.

        Raises:
            TypeError, ValueError: a field is invalid, a value cannot be packed,
                or the message is over the size limit.
        """
        message = Request(msgid, method, list(params) if isinstance(params, tuple) else params)
        return self._pack([REQUEST, message.msgid, message.method, message.params])

    def response(self, msgid: int, error: Any, result: Any) -> bytes:
        """Encode `[1, msgid, error, result]`; an `RpcError` is sent as its wire array.

        Raises:
            TypeError, ValueError: msgid is invalid, a value cannot be packed,
                or the message is over the size limit.
        """
        if isinstance(error, (RpcError, RpcFramingError)):
            error = error.to_wire()
        message = Response(msgid, error, result)
        return self._pack([RESPONSE, message.msgid, message.error, message.result])

    def notification(self, method: str, params: list) -> bytes:
        """Encode `[2, method, params]`.

        Raises:
            TypeError, ValueError: a field is invalid, a value cannot be packed,
                or the message is over the size limit.
        """
        message = Notification(method, list(params) if isinstance(params, tuple) else params)
        return self._pack([NOTIFICATION, message.method, message.params])

    def error_reply(self, error: RpcFramingError) -> bytes:
        """The bytes a server sends for a framing error, per the module's policy.

        A response to the recovered msgid when there is one and the error is
        not fatal; otherwise an `error` notification. After a fatal error the
        caller closes the connection.
        """
        if error.msgid is not None and not error.fatal:
            return self.response(error.msgid, error.to_wire(), None)
        return self.notification(ERROR_NOTIFICATION, [error.to_wire()])
