"""The device channel's wire protocol, sans-I/O: messages, codecs and the session.

A phone talks to a node over one websocket at /v1/device and negotiates the
subprotocol `pushguard.v1+msgpack` (binary frames) or `pushguard.v1+json` (text
frames). Both carry the same messages: one map per frame, whose string field
`type` names the message and whose other keys are the message's fields.

This module turns frames into validated, typed messages and back, and keeps the
per-connection rules (only enroll and hello before authentication; repeated
abuse closes the socket). It does no I/O, so the node, the simulator and the
tests drive it the same way.

Two error families:
- remote: the peer sent garbage. The decoders and `DeviceSession.receive` raise
  `DeviceError` with a code from `DeviceErrorCode`, ready to become an `error`
  frame, and nothing else for any input.
- local: the node misused the API. Building a message from invalid values raises
  `DeviceError(INVALID_FIELD)` too (validation is the same code path as
  decoding); a frame too large for the peer to accept raises `EncodeError`.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn

import msgpack

from engine.errors import DeviceError, DeviceErrorCode

SUBPROTOCOL_MSGPACK = "pushguard.v1+msgpack"
SUBPROTOCOL_JSON = "pushguard.v1+json"
SUBPROTOCOLS = (SUBPROTOCOL_MSGPACK, SUBPROTOCOL_JSON)
MAX_FRAME_BYTES = 65536

PLATFORMS = frozenset({"ios", "android", "web", "sim"})
RESOURCE_KINDS = frozenset({"login", "step_up", "password_reset", "device_login"})
MATCH_MODES = frozenset({"none", "choose", "type"})
CLOSED_STATUSES = frozenset({"approved", "denied", "expired", "cancelled"})
RESULT_STATUSES = frozenset({"approved", "denied"})
_ERROR_CODES = frozenset(code.value for code in DeviceErrorCode)

# Length limits, in characters. Those not fixed by the contract are generous
# for real values and keep a challenge frame a few KiB at most.
MAX_ID = 64
MAX_TOKEN = 4096
MAX_CODE = 256
MAX_NAME = 128  # device_name, app_version
MAX_LABEL = 256  # account, audience, resource name, context app and location
MAX_IP = 64
MAX_USER_AGENT = 1024
MAX_CONTEXT_HASH = 128
MAX_CHOICE = 16
MAX_CHOICES = 9
MAX_ERROR_MESSAGE = 1024
MAX_HEARTBEAT_S = 3600
# Timestamps stay within JavaScript's safe integers so that a web or
# React Native phone reads them exactly.
MAX_TIMESTAMP_MS = 2**53 - 1

PUBLIC_KEY_BYTES = 32
_PUBLIC_KEY = re.compile(r"[A-Za-z0-9_-]{43}=?")


class EncodeError(ValueError):
    """The message would make a frame the peer must refuse (over MAX_FRAME_BYTES)."""


# --- field validation -------------------------------------------------------


def _invalid(name: str, reason: str) -> DeviceError:
    return DeviceError(DeviceErrorCode.INVALID_FIELD, f"{name}: {reason}")


def _is_text(value: object, min_len: int, max_len: int) -> bool:
    """Whether `value` is a str of min_len..max_len characters that UTF-8 can carry."""
    if not isinstance(value, str) or not min_len <= len(value) <= max_len:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, which JSON's "\ud800" escapes produce
        return False
    return True


def _text(name: str, value: object, max_len: int, *, min_len: int = 1, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise _invalid(name, "must be a string" + (" or null" if optional else ""))
    if not _is_text(value, min_len, max_len):
        raise _invalid(name, f"must be {min_len} to {max_len} characters of valid text")


def _one_of(name: str, value: object, allowed: frozenset[str]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise _invalid(name, "must be one of " + ", ".join(sorted(allowed)))


def _integer(name: str, value: object, low: int, high: int) -> None:
    # bool is an int subclass in Python, but true is not 1 on the wire
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(name, "must be an integer")
    if not low <= value <= high:
        raise _invalid(name, f"must be between {low} and {high}")


def _boolean(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise _invalid(name, "must be true or false")


def decode_public_key(value: object) -> bytes:
    """The raw Ed25519 key that an enroll frame's `public_key` spells.

    The key is base64url of exactly 32 bytes, padding optional. Only the
    canonical spelling is accepted (the two spare bits are zero), so a key has
    one text form and the node can compare keys as strings.

    Raises:
        DeviceError: INVALID_FIELD naming `public_key`.
    """
    if not isinstance(value, str) or _PUBLIC_KEY.fullmatch(value) is None:
        raise _invalid("public_key", f"must be base64url of {PUBLIC_KEY_BYTES} bytes")
    raw = base64.urlsafe_b64decode(value[:43] + "=")
    if encode_public_key(raw) != value[:43]:
        raise _invalid("public_key", "must be canonical base64url (spare bits zero)")
    return raw


def encode_public_key(raw: bytes) -> str:
    """The unpadded base64url form of a raw 32-byte key, as phones send it."""
    if len(raw) != PUBLIC_KEY_BYTES:
        raise ValueError(f"a public key has {PUBLIC_KEY_BYTES} bytes, not {len(raw)}")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


# --- messages ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """One frame of the device channel; TYPE is its `type` on the wire."""

    TYPE: ClassVar[str]


@dataclass(frozen=True, slots=True)
class ClientMessage(Message):
    """A frame the phone sends to the node."""


@dataclass(frozen=True, slots=True)
class ServerMessage(Message):
    """A frame the node sends to the phone."""


@dataclass(frozen=True, slots=True)
class Enroll(ClientMessage):
    """Complete an enrollment with its one-time code and the phone's public key."""

    TYPE: ClassVar[str] = "enroll"
    code: str
    public_key: str
    platform: str
    push_token: str | None = None
    device_name: str | None = None
    app_version: str | None = None

    def __post_init__(self) -> None:
        _text("code", self.code, MAX_CODE)
        decode_public_key(self.public_key)
        _one_of("platform", self.platform, PLATFORMS)
        _text("push_token", self.push_token, MAX_TOKEN, optional=True)
        _text("device_name", self.device_name, MAX_NAME, min_len=0, optional=True)
        _text("app_version", self.app_version, MAX_NAME, min_len=0, optional=True)

    @property
    def public_key_bytes(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        return decode_public_key(self.public_key)


@dataclass(frozen=True, slots=True)
class Hello(ClientMessage):
    """Authenticate the socket with a token signed by the device's key."""

    TYPE: ClassVar[str] = "hello"
    token: str

    def __post_init__(self) -> None:
        _text("token", self.token, MAX_TOKEN)


@dataclass(frozen=True, slots=True)
class Ack(ClientMessage):
    """The phone received challenge `id`; `shown` when the user can see it."""

    TYPE: ClassVar[str] = "ack"
    id: str
    shown: bool

    def __post_init__(self) -> None:
        _text("id", self.id, MAX_ID)
        _boolean("shown", self.shown)


@dataclass(frozen=True, slots=True)
class Respond(ClientMessage):
    """The user's answer: a signed token naming the challenge and the decision."""

    TYPE: ClassVar[str] = "respond"
    token: str

    def __post_init__(self) -> None:
        _text("token", self.token, MAX_TOKEN)


@dataclass(frozen=True, slots=True)
class Update(ClientMessage):
    """A new push token; null stops push delivery. The key is required."""

    TYPE: ClassVar[str] = "update"
    push_token: str | None

    def __post_init__(self) -> None:
        _text("push_token", self.push_token, MAX_TOKEN, optional=True)


@dataclass(frozen=True, slots=True)
class Unenroll(ClientMessage):
    """The phone removes itself; the token proves it holds the device key."""

    TYPE: ClassVar[str] = "unenroll"
    token: str

    def __post_init__(self) -> None:
        _text("token", self.token, MAX_TOKEN)


@dataclass(frozen=True, slots=True)
class Enrolled(ServerMessage):
    """Enrollment done: the phone's device id and what its tokens must name."""

    TYPE: ClassVar[str] = "enrolled"
    device_id: str
    account: str
    audience: str

    def __post_init__(self) -> None:
        _text("device_id", self.device_id, MAX_ID)
        _text("account", self.account, MAX_LABEL)
        _text("audience", self.audience, MAX_LABEL)


@dataclass(frozen=True, slots=True)
class Resource:
    """What a challenge protects; a map inside a challenge frame."""

    kind: str
    name: str

    def __post_init__(self) -> None:
        _one_of("kind", self.kind, RESOURCE_KINDS)
        _text("name", self.name, MAX_LABEL)


@dataclass(frozen=True, slots=True)
class Context:
    """Where the login comes from, as shown to the user; every field optional.

    The fields default to None (and are then left off the wire) so that a
    backend that knows nothing about the login still makes a valid frame.
    """

    app: str | None = None
    ip: str | None = None
    location: str | None = None
    user_agent: str | None = None

    def __post_init__(self) -> None:
        _text("app", self.app, MAX_LABEL, min_len=0, optional=True)
        _text("ip", self.ip, MAX_IP, min_len=0, optional=True)
        _text("location", self.location, MAX_LABEL, min_len=0, optional=True)
        _text("user_agent", self.user_agent, MAX_USER_AGENT, min_len=0, optional=True)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> Context:
        """The context from a record's dict; keys other than the four are ignored."""
        values = values or {}
        return cls(
            app=values.get("app"),
            ip=values.get("ip"),
            location=values.get("location"),
            user_agent=values.get("user_agent"),
        )


@dataclass(frozen=True, slots=True)
class ChallengeFrame(ServerMessage):
    """A push challenge as the phone shows it; times are ms since the epoch.

    `choices` (the numbers to pick from) is present exactly when `match` is
    "choose".
    """

    TYPE: ClassVar[str] = "challenge"
    id: str
    account: str
    resource: Resource
    context: Context
    created_at: int
    expires_at: int
    require_biometric: bool
    match: str
    context_hash: str
    choices: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        _text("id", self.id, MAX_ID)
        _text("account", self.account, MAX_LABEL)
        if not isinstance(self.resource, Resource):
            raise _invalid("resource", "must be a map with kind and name")
        if not isinstance(self.context, Context):
            raise _invalid("context", "must be a map")
        _integer("created_at", self.created_at, 0, MAX_TIMESTAMP_MS)
        _integer("expires_at", self.expires_at, self.created_at, MAX_TIMESTAMP_MS)
        _boolean("require_biometric", self.require_biometric)
        _one_of("match", self.match, MATCH_MODES)
        _text("context_hash", self.context_hash, MAX_CONTEXT_HASH)
        if self.match != "choose":
            if self.choices is not None:
                raise _invalid("choices", 'allowed only when match is "choose"')
            return
        if not isinstance(self.choices, tuple) or not 2 <= len(self.choices) <= MAX_CHOICES:
            raise _invalid("choices", f'must be a list of 2 to {MAX_CHOICES} strings when match is "choose"')
        for choice in self.choices:
            _text("choices", choice, MAX_CHOICE)
        if len(set(self.choices)) != len(self.choices):
            raise _invalid("choices", "must be distinct")

    @classmethod
    def build(
        cls,
        *,
        id: str,
        account: str,
        resource_kind: str,
        resource_name: str,
        context: Mapping[str, Any] | Context | None,
        created_at: int,
        expires_at: int,
        context_hash: str,
        require_biometric: bool = False,
        match: str = "none",
        choices: Iterable[str] | None = None,
    ) -> ChallengeFrame:
        """A frame from the plain values of a challenge record.

        String enums (such as a record's ResourceKind or MatchMode) become their
        plain values, a context dict is read with `Context.from_mapping`, and
        choices may be any iterable.

        Raises:
            DeviceError: INVALID_FIELD if a value is out of the protocol's range.
        """
        return cls(
            id=id,
            account=account,
            resource=Resource(kind=_plain(resource_kind), name=resource_name),
            context=context if isinstance(context, Context) else Context.from_mapping(context),
            created_at=created_at,
            expires_at=expires_at,
            require_biometric=require_biometric,
            match=_plain(match),
            context_hash=context_hash,
            choices=None if choices is None else tuple(choices),
        )


def _plain(value: object) -> object:
    # str() of a StrEnum member is its value; other types are left for validation to reject
    return str(value) if isinstance(value, str) else value


@dataclass(frozen=True, slots=True)
class Welcome(ServerMessage):
    """Authenticated: the heartbeat interval and the challenges still open."""

    TYPE: ClassVar[str] = "welcome"
    heartbeat_s: int
    pending: tuple[ChallengeFrame, ...]

    def __post_init__(self) -> None:
        _integer("heartbeat_s", self.heartbeat_s, 1, MAX_HEARTBEAT_S)
        if not isinstance(self.pending, tuple) or not all(isinstance(p, ChallengeFrame) for p in self.pending):
            raise _invalid("pending", "must be a list of challenges")


@dataclass(frozen=True, slots=True)
class Closed(ServerMessage):
    """Challenge `id` ended elsewhere (or expired); the phone removes it."""

    TYPE: ClassVar[str] = "closed"
    id: str
    status: str

    def __post_init__(self) -> None:
        _text("id", self.id, MAX_ID)
        _one_of("status", self.status, CLOSED_STATUSES)


@dataclass(frozen=True, slots=True)
class Result(ServerMessage):
    """The node recorded the phone's answer to challenge `id`."""

    TYPE: ClassVar[str] = "result"
    id: str
    status: str

    def __post_init__(self) -> None:
        _text("id", self.id, MAX_ID)
        _one_of("status", self.status, RESULT_STATUSES)


@dataclass(frozen=True, slots=True)
class Error(ServerMessage):
    """A refused frame; `id` names the challenge or frame it is about, if known."""

    TYPE: ClassVar[str] = "error"
    code: DeviceErrorCode
    message: str
    id: str | None = None

    def __post_init__(self) -> None:
        _one_of("code", self.code, _ERROR_CODES)
        object.__setattr__(self, "code", DeviceErrorCode(self.code))
        _text("message", self.message, MAX_ERROR_MESSAGE, min_len=0)
        _text("id", self.id, MAX_ID, optional=True)


@dataclass(frozen=True, slots=True)
class Revoked(ServerMessage):
    """The device was revoked; the socket closes with 4403 after this frame."""

    TYPE: ClassVar[str] = "revoked"
    reason: str

    def __post_init__(self) -> None:
        _text("reason", self.reason, MAX_LABEL)


CLIENT_MESSAGES: Mapping[str, type[ClientMessage]] = {
    cls.TYPE: cls for cls in (Enroll, Hello, Ack, Respond, Update, Unenroll)
}
SERVER_MESSAGES: Mapping[str, type[ServerMessage]] = {
    cls.TYPE: cls for cls in (Enrolled, ChallengeFrame, Welcome, Closed, Result, Error, Revoked)
}

# Fields whose wire map decodes into a nested class, and fields whose list of maps does.
_NESTED_ONE: Mapping[tuple[type, str], type] = {
    (ChallengeFrame, "resource"): Resource,
    (ChallengeFrame, "context"): Context,
}
_NESTED_MANY: Mapping[tuple[type, str], type] = {
    (Welcome, "pending"): ChallengeFrame,
}


# --- wire mapping -----------------------------------------------------------


@functools.cache
def _wire_fields(cls: type) -> tuple[tuple[str, bool], ...]:
    """(name, optional) of each field; optional fields have a default and may be left off."""
    return tuple((f.name, f.default is not dataclasses.MISSING) for f in dataclasses.fields(cls))


def _to_wire(value: Any) -> Any:
    match value:
        case Message():
            return {"type": value.TYPE, **_fields_to_wire(value)}
        case Resource() | Context():
            return _fields_to_wire(value)
        case tuple():
            return [_to_wire(item) for item in value]
        case str():
            return str(value)  # a StrEnum member (Error.code) goes out as its plain value
        case _:
            return value


def _fields_to_wire(value: Any) -> dict[str, Any]:
    wire = {}
    for name, optional in _wire_fields(type(value)):
        item = getattr(value, name)
        if item is None and optional:
            continue
        wire[name] = _to_wire(item)
    return wire


def _from_wire(cls: type, frame: Mapping[str, Any]) -> Any:
    values = {}
    for name, optional in _wire_fields(cls):
        if name not in frame:
            if optional:
                continue
            raise _invalid(name, "missing")
        values[name] = _field_from_wire(cls, name, frame[name])
    return cls(**values)


def _field_from_wire(owner: type, name: str, raw: Any) -> Any:
    if isinstance(raw, list):
        # every list field is a tuple in its dataclass; a list elsewhere fails validation
        nested = _NESTED_MANY.get((owner, name))
        if nested is None:
            return tuple(raw)
        return tuple(_nested_from_wire(nested, item, f"{name}[{i}]") for i, item in enumerate(raw))
    nested = _NESTED_ONE.get((owner, name))
    if nested is not None:
        return _nested_from_wire(nested, raw, name)
    return raw


def _nested_from_wire(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        return raw  # the owner's validation names the field and the expected shape
    if not all(isinstance(key, str) for key in raw):
        raise _invalid(where, "map keys must be strings")
    try:
        return _from_wire(cls, raw)
    except DeviceError as err:
        raise DeviceError(DeviceErrorCode.INVALID_FIELD, f"{where}.{err.message}") from None


# --- codec ------------------------------------------------------------------


def _bad_frame(reason: str) -> DeviceError:
    return DeviceError(DeviceErrorCode.BAD_FRAME, reason)


def _too_large() -> DeviceError:
    return DeviceError(DeviceErrorCode.TOO_LARGE, f"frame larger than {MAX_FRAME_BYTES} bytes")


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


class DeviceCodec:
    """Messages to frames and back, for one negotiated subprotocol.

    msgpack frames are binary websocket messages (bytes); JSON frames are text
    messages (str). Both carry the same maps.
    """

    __slots__ = ("subprotocol", "binary")

    def __init__(self, subprotocol: str):
        if subprotocol not in SUBPROTOCOLS:
            raise ValueError(f"unknown subprotocol {subprotocol!r}; expected one of {SUBPROTOCOLS}")
        self.subprotocol = subprotocol
        self.binary = subprotocol == SUBPROTOCOL_MSGPACK

    def __repr__(self) -> str:
        return f"DeviceCodec({self.subprotocol!r})"

    def encode(self, message: Message) -> bytes | str:
        """The frame for `message`: bytes for msgpack, str for JSON.

        Raises:
            EncodeError: the frame would be over MAX_FRAME_BYTES, which the peer
                refuses (for instance a welcome with too many pending challenges).
        """
        if not isinstance(message, Message):
            raise TypeError(f"not a device message: {message!r}")
        wire = _to_wire(message)
        frame: bytes | str
        if self.binary:
            frame = msgpack.packb(wire, use_bin_type=True)
            size = len(frame)
        else:
            frame = json.dumps(wire, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            # a character is at most 4 bytes of UTF-8: only long text needs measuring
            size = len(frame) if len(frame) <= MAX_FRAME_BYTES // 4 else len(frame.encode("utf-8"))
        if size > MAX_FRAME_BYTES:
            raise EncodeError(f"{message.TYPE} frame of {size} bytes is over {MAX_FRAME_BYTES}")
        return frame

    def decode_client(self, data: bytes | str) -> ClientMessage:
        """The phone's message in `data` (what the node reads).

        Raises:
            DeviceError: TOO_LARGE, BAD_FRAME, UNKNOWN_TYPE or INVALID_FIELD; its
                `id` is the frame's `id` field when there is a usable one.
        """
        return self._decode(data, CLIENT_MESSAGES)

    def decode_server(self, data: bytes | str) -> ServerMessage:
        """The node's message in `data` (what a phone, such as the simulator, reads).

        Raises:
            DeviceError: as `decode_client`.
        """
        return self._decode(data, SERVER_MESSAGES)

    def _decode(self, data: bytes | str, registry: Mapping[str, type[Any]]) -> Any:
        frame = self._parse(data)
        reference = frame.get("id")
        try:
            kind = frame.get("type")
            if not isinstance(kind, str):
                raise _bad_frame("the frame has no string field type")
            cls = registry.get(kind)
            if cls is None:
                raise DeviceError(DeviceErrorCode.UNKNOWN_TYPE)
            return _from_wire(cls, frame)
        except DeviceError as err:
            # lets the error frame name the challenge the phone was talking about
            if _is_text(reference, 1, MAX_ID):
                err.id = reference
            raise

    def _parse(self, data: bytes | str) -> dict[str, Any]:
        """One map with string keys from the frame, before any field is looked at."""
        if self.binary:
            value = self._parse_msgpack(data)
        else:
            value = self._parse_json(data)
        if not isinstance(value, dict):
            raise _bad_frame("the frame is not a map")
        if not all(isinstance(key, str) for key in value):
            raise _bad_frame("map keys must be strings")
        return value

    def _parse_msgpack(self, data: bytes | str) -> Any:
        if not isinstance(data, (bytes, bytearray)):
            raise _bad_frame(f"{SUBPROTOCOL_MSGPACK} takes binary frames")
        if len(data) > MAX_FRAME_BYTES:
            raise _too_large()
        try:
            # explicit limits: a declared length never allocates past the frame
            return msgpack.unpackb(
                data,
                raw=False,
                strict_map_key=True,
                max_str_len=MAX_FRAME_BYTES,
                max_bin_len=MAX_FRAME_BYTES,
                max_ext_len=MAX_FRAME_BYTES,
                max_array_len=MAX_FRAME_BYTES,
                max_map_len=MAX_FRAME_BYTES // 2,
            )
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            # ValueError covers invalid UTF-8, trailing data, nesting too deep and bad timestamps
            raise _bad_frame("not one msgpack value") from exc

    def _parse_json(self, data: bytes | str) -> Any:
        if not isinstance(data, str):
            raise _bad_frame(f"{SUBPROTOCOL_JSON} takes text frames")
        if len(data) > MAX_FRAME_BYTES:  # every character is at least one byte
            raise _too_large()
        try:
            size = len(data.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise _bad_frame("not UTF-8 text") from exc
        if size > MAX_FRAME_BYTES:
            raise _too_large()
        try:
            return json.loads(data, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            # ValueError covers syntax, trailing data, NaN/Infinity and overlong integers
            raise _bad_frame("not one JSON value") from exc


# --- session ----------------------------------------------------------------


class DeviceSession:
    """The node's state for one device socket.

    Before authentication only `enroll` and `hello` pass; after it, both are
    refused. The node counts the peer's protocol errors here, and the socket is
    closed with 1008 once they reach `max_errors`.

    Attributes:
        authenticated: `hello` succeeded and `authenticate` was called.
        errors: protocol errors counted against the peer so far.
        device_id: the authenticated device, or None.
    """

    def __init__(self, codec: DeviceCodec, max_errors: int = 5):
        if max_errors < 1:
            raise ValueError("max_errors must be at least 1")
        self.codec = codec
        self.max_errors = max_errors
        self.authenticated = False
        self.errors = 0
        self.device_id: str | None = None

    def receive(self, data: bytes | str) -> ClientMessage:
        """The phone's next message, if the session's state allows it.

        Raises:
            DeviceError: any decoding error, NOT_AUTHENTICATED or ALREADY_AUTHENTICATED.
        """
        message = self.codec.decode_client(data)
        match message:
            case Enroll() | Hello():
                if self.authenticated:
                    raise DeviceError(DeviceErrorCode.ALREADY_AUTHENTICATED)
            case Ack(id=reference):
                if not self.authenticated:
                    raise DeviceError(DeviceErrorCode.NOT_AUTHENTICATED, id=reference)
            case _:
                if not self.authenticated:
                    raise DeviceError(DeviceErrorCode.NOT_AUTHENTICATED)
        return message

    def authenticate(self, device_id: str) -> None:
        """Mark the socket as the device's, after the node verified its hello.

        Raises:
            RuntimeError: the session is already authenticated (a node bug).
            ValueError: `device_id` is not 1 to 64 characters of text.
        """
        if self.authenticated:
            raise RuntimeError(f"session already authenticated as {self.device_id!r}")
        if not _is_text(device_id, 1, MAX_ID):
            raise ValueError(f"invalid device id {device_id!r}")
        self.authenticated = True
        self.device_id = device_id

    def send(self, message: ServerMessage) -> bytes | str:
        """The frame for a message to the phone.

        Raises:
            TypeError: `message` is not a ServerMessage.
            EncodeError: the frame would be too large for the phone.
        """
        if not isinstance(message, ServerMessage):
            raise TypeError(f"not a message to the phone: {message!r}")
        return self.codec.encode(message)

    def error_frame(self, err: DeviceError, *, abuse: bool = True) -> tuple[bytes | str, bool]:
        """The `error` frame for `err`, and whether to close the socket with 1008 now.

        Protocol errors (`abuse`, the default) count against the peer; once they
        reach `max_errors` the answer is to close. Answers to `respond` such as
        expired or already_decided are ordinary outcomes: pass abuse=False and
        they neither count nor close.
        """
        if abuse:
            self.errors += 1
        # node code may put anything in a DeviceError: clip it to what a frame can carry
        message = err.message.encode("utf-8", "replace").decode("utf-8")[:MAX_ERROR_MESSAGE]
        reference = err.id if _is_text(err.id, 1, MAX_ID) else None
        frame = self.send(Error(code=err.code, message=message, id=reference))
        return frame, abuse and self.errors >= self.max_errors
