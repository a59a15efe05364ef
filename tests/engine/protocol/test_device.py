"""Tests of the device channel's sans-I/O protocol: messages, both codecs, the session.

No sockets: a pair helper pipes a phone-side codec and a node-side session
together, and hypothesis throws malformed frames at both decoders.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import DESCRIPTIONS_DEVICE, DeviceError, DeviceErrorCode
from engine.models import MatchMode, ResourceKind
from engine.protocol.device import (
    CLIENT_MESSAGES,
    MAX_FRAME_BYTES,
    SERVER_MESSAGES,
    SUBPROTOCOL_JSON,
    SUBPROTOCOL_MSGPACK,
    SUBPROTOCOLS,
    Ack,
    ChallengeFrame,
    ClientMessage,
    Closed,
    Context,
    DeviceCodec,
    DeviceSession,
    EncodeError,
    Enroll,
    Enrolled,
    Error,
    Hello,
    Message,
    Resource,
    Respond,
    Result,
    Revoked,
    ServerMessage,
    Unenroll,
    Update,
    Welcome,
    decode_public_key,
    encode_public_key,
)

KEY = encode_public_key(bytes(range(32)))
MSGPACK = DeviceCodec(SUBPROTOCOL_MSGPACK)
JSON = DeviceCodec(SUBPROTOCOL_JSON)
CODECS = [MSGPACK, JSON]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Hand-made frames, before any mutation.
ENROLL = {"type": "enroll", "code": "c", "public_key": KEY, "platform": "ios"}
ACK = {"type": "ack", "id": "ch-1", "shown": True}
WELCOME = {"type": "welcome", "heartbeat_s": 30, "pending": []}


def challenge(
    id: str = "ch-1", *, match: str = "none", choices: tuple[str, ...] | None = None
) -> ChallengeFrame:
    return ChallengeFrame(
        id=id,
        account="alice@example.com",
        resource=Resource(kind="login", name="vpn"),
        context=Context(app="VPN", ip="203.0.113.9", location="Lyon, FR", user_agent="Firefox"),
        created_at=1_700_000_000_000,
        expires_at=1_700_000_060_000,
        require_biometric=True,
        match=match,
        context_hash="sha256:abc",
        choices=choices,
    )


# One message of each type with every field set, and one with only the required ones.
SAMPLES: list[Message] = [
    Enroll(
        code="123-456", public_key=KEY, platform="android", push_token="fcm:x", device_name="Pixel", app_version="1.2"
    ),
    Enroll(code="123-456", public_key=KEY, platform="sim"),
    Hello(token="jwt.hello.token"),
    Ack(id="ch-1", shown=True),
    Respond(token="jwt.respond.token"),
    Update(push_token="apns:y"),
    Update(push_token=None),
    Unenroll(token="jwt.unenroll.token"),
    Enrolled(device_id="dev-1", account="alice@example.com", audience="pushguard:node-1"),
    challenge(),
    challenge(match="choose", choices=("12", "47", "83")),
    ChallengeFrame(
        id="ch-2", account="bob", resource=Resource(kind="step_up", name="payroll"), context=Context(),
        created_at=0, expires_at=0, require_biometric=False, match="type", context_hash="h",
    ),
    Welcome(heartbeat_s=25, pending=()),
    Welcome(heartbeat_s=25, pending=(challenge("a"), challenge("b", match="choose", choices=("1", "2")))),
    Closed(id="ch-1", status="cancelled"),
    Result(id="ch-1", status="denied"),
    Error(code=DeviceErrorCode.EXPIRED, message="too late", id="ch-1"),
    Error(code="bad_frame", message=""),
    Revoked(reason="admin"),
]


def decode(codec: DeviceCodec, frame: bytes | str, message: Message) -> Message:
    """Decode in the direction `message` travels."""
    if isinstance(message, ClientMessage):
        return codec.decode_client(frame)
    return codec.decode_server(frame)


def raw_map(codec: DeviceCodec, frame: bytes | str) -> dict[str, Any]:
    return msgpack.unpackb(frame, raw=False) if codec.binary else json.loads(frame)


def frame_of(codec: DeviceCodec, value: Any) -> bytes | str:
    """A hand-made frame holding `value`, bypassing message validation."""
    if codec.binary:
        return msgpack.packb(value, use_bin_type=True)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def refused(decode_fn, frame: Any) -> DeviceError:
    with pytest.raises(DeviceError) as info:
        decode_fn(frame)
    return info.value


# --- messages and round trips -----------------------------------------------


@pytest.mark.parametrize("codec", CODECS, ids=SUBPROTOCOLS)
@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(codec: DeviceCodec, message: Message) -> None:
    frame = codec.encode(message)
    assert isinstance(frame, bytes if codec.binary else str)
    assert decode(codec, frame, message) == message
    assert raw_map(codec, frame)["type"] == message.TYPE


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_json_and_msgpack_frames_decode_to_the_same_message(message: Message) -> None:
    assert decode(MSGPACK, MSGPACK.encode(message), message) == decode(JSON, JSON.encode(message), message)
    assert raw_map(MSGPACK, MSGPACK.encode(message)) == raw_map(JSON, JSON.encode(message))


def test_codec_properties_and_unknown_subprotocol() -> None:
    assert (MSGPACK.subprotocol, MSGPACK.binary) == (SUBPROTOCOL_MSGPACK, True)
    assert (JSON.subprotocol, JSON.binary) == (SUBPROTOCOL_JSON, False)
    with pytest.raises(ValueError):
        DeviceCodec("pushguard.v2+json")


def test_json_frames_are_compact() -> None:
    assert JSON.encode(Ack(id="c", shown=False)) == '{"type":"ack","id":"c","shown":false}'


@pytest.mark.parametrize("codec", CODECS, ids=SUBPROTOCOLS)
def test_optional_fields_left_off_when_none(codec: DeviceCodec) -> None:
    assert set(raw_map(codec, codec.encode(Enroll(code="c", public_key=KEY, platform="ios")))) == {
        "type", "code", "public_key", "platform",
    }
    assert "id" not in raw_map(codec, codec.encode(Error(code="internal", message="m")))
    wire = raw_map(codec, codec.encode(challenge()))
    assert "choices" not in wire
    partial = ChallengeFrame.build(
        id="c", account="a", resource_kind="login", resource_name="n", context={"ip": "::1"},
        created_at=1, expires_at=2, context_hash="h",
    )
    assert raw_map(codec, codec.encode(partial))["context"] == {"ip": "::1"}
    # update's push_token is required: null says "stop pushing", so it stays on the wire
    assert raw_map(codec, codec.encode(Update(push_token=None))) == {"type": "update", "push_token": None}


@pytest.mark.parametrize("codec", CODECS, ids=SUBPROTOCOLS)
def test_update_needs_the_push_token_key(codec: DeviceCodec) -> None:
    err = refused(codec.decode_client, frame_of(codec, {"type": "update"}))
    assert err.code == DeviceErrorCode.INVALID_FIELD and "push_token" in err.message
    assert codec.decode_client(frame_of(codec, {"type": "update", "push_token": None})) == Update(None)


@pytest.mark.parametrize("codec", CODECS, ids=SUBPROTOCOLS)
def test_unknown_extra_keys_are_ignored(codec: DeviceCodec) -> None:
    wire = raw_map(codec, codec.encode(Welcome(heartbeat_s=30, pending=(challenge(),))))
    wire["future"] = {"nested": [1, 2]}
    wire["pending"][0]["resource"]["icon"] = "vpn.png"
    wire["pending"][0]["context"]["asn"] = 64500
    assert codec.decode_server(frame_of(codec, wire)) == Welcome(heartbeat_s=30, pending=(challenge(),))
    assert codec.decode_client(frame_of(codec, {"type": "hello", "token": "t", "nonce": 7})) == Hello("t")


@pytest.mark.parametrize("codec", CODECS, ids=SUBPROTOCOLS)
def test_optional_fields_accept_explicit_null(codec: DeviceCodec) -> None:
    frame = frame_of(codec, {**ENROLL, "platform": "web", "push_token": None})
    assert codec.decode_client(frame) == Enroll(code="c", public_key=KEY, platform="web")


def test_challenge_builds_from_a_records_plain_values() -> None:
    frame = ChallengeFrame.build(
        id="ch-9", account="alice", resource_kind=ResourceKind.PASSWORD_RESET, resource_name="sso",
        context={"app": "SSO", "ip": "198.51.100.1", "internal_note": "ignored"},
        created_at=10, expires_at=70, context_hash="h", require_biometric=True,
        match=MatchMode.CHOOSE, choices=iter(["4", "5", "6"]),
    )
    assert frame.resource == Resource(kind="password_reset", name="sso")
    assert type(frame.resource.kind) is str and type(frame.match) is str
    assert frame.context == Context(app="SSO", ip="198.51.100.1")
    assert frame.choices == ("4", "5", "6")
    assert JSON.decode_server(JSON.encode(frame)) == frame


@pytest.mark.parametrize(
    "build",
    [
        lambda: Enroll(code="c", public_key=KEY, platform="windows"),
        lambda: Ack(id="", shown=True),
        lambda: Ack(id="c", shown=1),
        lambda: Welcome(heartbeat_s=True, pending=()),
        lambda: Welcome(heartbeat_s=30, pending=[challenge()]),
        lambda: Error(code="nope", message="m"),
        lambda: Closed(id="c", status="approved?"),
        lambda: Result(id="c", status="expired"),
        lambda: challenge(match="choose"),
        lambda: challenge(match="choose", choices=("1", "1")),
        lambda: challenge(match="none", choices=("1", "2")),
        lambda: ChallengeFrame.build(
            id="c", account="a", resource_kind="login", resource_name="n", context=None,
            created_at=100, expires_at=99, context_hash="h",
        ),
        lambda: Hello(token="\ud800"),  # a lone surrogate cannot be sent as UTF-8
    ],
)
def test_messages_validate_on_construction(build) -> None:
    with pytest.raises(DeviceError) as info:
        build()
    assert info.value.code == DeviceErrorCode.INVALID_FIELD


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_messages_are_frozen_and_slotted(message: Message) -> None:
    first = dataclasses.fields(message)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(message, first, getattr(message, first))
    assert not hasattr(message, "__dict__")


def test_error_code_is_the_enum_member() -> None:
    assert Error(code="expired", message="m").code is DeviceErrorCode.EXPIRED


# --- decoding errors --------------------------------------------------------


def padded(codec: DeviceCodec, size: int, pad_char: str = "x") -> bytes | str:
    """A valid hello frame of exactly `size` bytes, grown by an unknown key."""
    body = {"type": "hello", "token": "t", "pad": ""}
    width = len(pad_char.encode())
    for _ in range(5):  # msgpack's string header grows with the length: settle in a few steps
        frame = frame_of(codec, body)
        pad_bytes = len(body["pad"].encode()) + size - len(frame if codec.binary else frame.encode())
        if pad_bytes == len(body["pad"].encode()):
            return frame
        body["pad"] = pad_char * (pad_bytes // width) + "x" * (pad_bytes % width)
    raise AssertionError("could not pad the frame to the size")


@pytest.mark.parametrize("codec", CODECS, ids=SUBPROTOCOLS)
def test_frame_size_limit(codec: DeviceCodec) -> None:
    assert codec.decode_client(padded(codec, MAX_FRAME_BYTES)) == Hello("t")
    assert refused(codec.decode_client, padded(codec, MAX_FRAME_BYTES + 1)).code == DeviceErrorCode.TOO_LARGE
    assert refused(codec.decode_server, padded(codec, MAX_FRAME_BYTES + 1)).code == DeviceErrorCode.TOO_LARGE


def test_json_size_is_counted_in_utf8_bytes() -> None:
    frame = padded(JSON, MAX_FRAME_BYTES + 2, pad_char="é")
    assert len(frame) < MAX_FRAME_BYTES < len(frame.encode())
    assert refused(JSON.decode_client, frame).code == DeviceErrorCode.TOO_LARGE


@pytest.mark.parametrize("codec", CODECS, ids=SUBPROTOCOLS)
def test_encoding_a_frame_the_peer_would_refuse_is_a_local_error(codec: DeviceCodec) -> None:
    big = ChallengeFrame.build(
        id="c", account="a" * 256, resource_kind="login", resource_name="n" * 256,
        context={"user_agent": "u" * 1024, "app": "a" * 256, "location": "l" * 256},
        created_at=1, expires_at=2, context_hash="h" * 128,
    )
    with pytest.raises(EncodeError):
        codec.encode(Welcome(heartbeat_s=30, pending=(big,) * 40))
    fits = Welcome(heartbeat_s=30, pending=(big,) * 4)
    assert codec.decode_server(codec.encode(fits)) == fits


@pytest.mark.parametrize(
    ("codec", "frame"),
    [
        (MSGPACK, '{"type":"hello","token":"t"}'),  # text frame on the binary subprotocol
        (JSON, msgpack.packb({"type": "hello", "token": "t"})),  # binary frame on the text one
        (JSON, b'{"type":"hello","token":"t"}'),
        (MSGPACK, b"\xc1"),  # the one byte msgpack never uses
        (MSGPACK, msgpack.packb({"type": "hello", "token": "t"}) + b"\xc0"),  # trailing data
        (MSGPACK, msgpack.packb({"type": "hello", "token": "t"})[:-1]),  # truncated
        (MSGPACK, b"\x81\xa4type\xa5hel\xff\xff"),  # invalid UTF-8 in a str
        (MSGPACK, b"\x82\xa4type\xa5hello\xa5token\xd4\xff\x00"),  # a timestamp ext of 1 byte
        (MSGPACK, msgpack.packb({b"type": "hello"}, use_bin_type=True)),  # bin key
        (MSGPACK, msgpack.packb({1: "hello"})),
        (JSON, '{"type":"hello","token":"t"'),
        (JSON, '{"type":"hello","token":"t"} {}'),  # trailing data
        (JSON, '{"type":"hello","token":NaN}'),
        (JSON, '{"type":"hello","token":-Infinity}'),
        (JSON, "[" * 100_00 + "]" * 100_00),
        (JSON, '{"type":"hello","token":"\ud800"}'),  # not encodable as UTF-8
    ],
)
def test_unparsable_frames_are_bad_frames(codec: DeviceCodec, frame: Any) -> None:
    assert refused(codec.decode_client, frame).code == DeviceErrorCode.BAD_FRAME
    assert refused(codec.decode_server, frame).code == DeviceErrorCode.BAD_FRAME


@pytest.mark.parametrize("codec", CODECS, ids=SUBPROTOCOLS)
@pytest.mark.parametrize("value", [[1, 2], "hello", 5, None, {"token": "t"}, {"type": 5}, {"type": None}])
def test_frames_that_are_not_typed_maps_are_bad_frames(codec: DeviceCodec, value: Any) -> None:
    assert refused(codec.decode_client, frame_of(codec, value)).code == DeviceErrorCode.BAD_FRAME


@pytest.mark.parametrize("codec", CODECS, ids=SUBPROTOCOLS)
def test_unknown_types_per_direction(codec: DeviceCodec) -> None:
    err = refused(codec.decode_client, frame_of(codec, {"type": "nope"}))
    assert err.code == DeviceErrorCode.UNKNOWN_TYPE
    # a node-to-phone type is unknown to the node, and the other way round
    assert refused(codec.decode_client, codec.encode(Revoked("x"))).code == DeviceErrorCode.UNKNOWN_TYPE
    assert refused(codec.decode_server, codec.encode(Hello("t"))).code == DeviceErrorCode.UNKNOWN_TYPE


@pytest.mark.parametrize("codec", CODECS, ids=SUBPROTOCOLS)
@pytest.mark.parametrize(
    ("frame", "field"),
    [
        ({"type": "hello"}, "token"),
        ({**ENROLL, "public_key": None}, "public_key"),
        ({k: v for k, v in ENROLL.items() if k != "platform"}, "platform"),
        ({**ENROLL, "platform": "symbian"}, "platform"),
        ({**ENROLL, "platform": "IOS"}, "platform"),
        ({**ENROLL, "public_key": "!" * 43}, "public_key"),
        ({**ENROLL, "public_key": encode_public_key(bytes(32))[:-1]}, "public_key"),  # 31.x bytes
        ({**ENROLL, "public_key": encode_public_key(bytes(32)) + "AA"}, "public_key"),  # 33 bytes
        ({**ENROLL, "public_key": "A" * 42 + "B"}, "public_key"),  # spare bits set: not canonical
        ({**ENROLL, "public_key": KEY + "=="}, "public_key"),
        ({**ENROLL, "code": ""}, "code"),
        ({**ENROLL, "code": "c" * 257}, "code"),
        ({**ENROLL, "push_token": "p" * 4097}, "push_token"),
        ({**ENROLL, "device_name": "d" * 129}, "device_name"),
        ({**ENROLL, "app_version": "v" * 129}, "app_version"),
        ({"type": "hello", "token": "t" * 4097}, "token"),
        ({**ACK, "id": "i" * 65}, "id"),
        ({**ACK, "shown": 1}, "shown"),  # an int is not a bool
        ({**ACK, "shown": "true"}, "shown"),
        ({"type": "respond", "token": 12}, "token"),
        ({"type": "unenroll", "token": ["t"]}, "token"),
        ({"type": "update", "push_token": False}, "push_token"),
    ],
)
def test_client_fields_are_checked(codec: DeviceCodec, frame: dict[str, Any], field: str) -> None:
    err = refused(codec.decode_client, frame_of(codec, frame))
    assert err.code == DeviceErrorCode.INVALID_FIELD
    assert err.message.startswith(field + ":")


@pytest.mark.parametrize("codec", CODECS, ids=SUBPROTOCOLS)
@pytest.mark.parametrize(
    ("frame", "field"),
    [
        ({**WELCOME, "heartbeat_s": True}, "heartbeat_s"),  # a bool is not an int
        ({**WELCOME, "heartbeat_s": 30.0}, "heartbeat_s"),
        ({**WELCOME, "heartbeat_s": 0}, "heartbeat_s"),
        ({**WELCOME, "pending": [1]}, "pending"),
        ({**WELCOME, "pending": {}}, "pending"),
        ({"type": "closed", "id": "c", "status": "approve"}, "status"),
        ({"type": "error", "code": "teapot", "message": "m"}, "code"),
        ({"type": "enrolled", "device_id": "d", "account": "a"}, "audience"),
    ],
)
def test_server_fields_are_checked(codec: DeviceCodec, frame: dict[str, Any], field: str) -> None:
    err = refused(codec.decode_server, frame_of(codec, frame))
    assert err.code == DeviceErrorCode.INVALID_FIELD
    assert err.message.startswith(field + ":")


@pytest.mark.parametrize("codec", CODECS, ids=SUBPROTOCOLS)
def test_nested_fields_are_checked_and_named(codec: DeviceCodec) -> None:
    wire = raw_map(codec, codec.encode(Welcome(heartbeat_s=30, pending=(challenge(), challenge("b")))))
    wire["pending"][1]["resource"]["kind"] = "logout"
    err = refused(codec.decode_server, frame_of(codec, wire))
    assert err.code == DeviceErrorCode.INVALID_FIELD
    assert err.message.startswith("pending[1].resource.kind:")
    wire = raw_map(codec, codec.encode(challenge()))
    wire["created_at"] = True
    assert refused(codec.decode_server, frame_of(codec, wire)).message.startswith("created_at:")
    del wire["created_at"]
    assert refused(codec.decode_server, frame_of(codec, wire)).message == "created_at: missing"


def test_msgpack_bin_and_ext_are_not_strings() -> None:
    err = refused(MSGPACK.decode_client, msgpack.packb({"type": "hello", "token": b"t"}, use_bin_type=True))
    assert err.code == DeviceErrorCode.INVALID_FIELD
    ext = msgpack.packb({"type": "hello", "token": msgpack.ExtType(5, b"t")})
    assert refused(MSGPACK.decode_client, ext).code == DeviceErrorCode.INVALID_FIELD
    nested = msgpack.packb({**raw_map(MSGPACK, MSGPACK.encode(challenge())), "resource": {b"kind": "login"}})
    assert refused(MSGPACK.decode_server, nested).message.startswith("resource:")


def test_public_key_padding_is_optional() -> None:
    raw = os.urandom(32)
    assert decode_public_key(encode_public_key(raw)) == raw == decode_public_key(encode_public_key(raw) + "=")
    assert Enroll(code="c", public_key=encode_public_key(raw) + "=", platform="ios").public_key_bytes == raw


@pytest.mark.parametrize("codec", CODECS, ids=SUBPROTOCOLS)
def test_the_frames_id_is_carried_into_the_error(codec: DeviceCodec) -> None:
    assert refused(codec.decode_client, frame_of(codec, {**ACK, "shown": "yes"})).id == "ch-1"
    assert refused(codec.decode_client, frame_of(codec, {"type": "cancel", "id": "ch-2"})).id == "ch-2"
    assert refused(codec.decode_client, frame_of(codec, {"id": "ch-3"})).id == "ch-3"
    # an id the error frame could not carry is left out
    assert refused(codec.decode_client, frame_of(codec, {**ACK, "id": "i" * 65})).id is None
    assert refused(codec.decode_client, frame_of(codec, {"type": "cancel", "id": 7})).id is None


# --- session ----------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS, ids=SUBPROTOCOLS)
def test_only_enroll_and_hello_before_authentication(codec: DeviceCodec) -> None:
    session = DeviceSession(codec)
    assert not session.authenticated and session.device_id is None and session.errors == 0
    assert session.receive(codec.encode(SAMPLES[0])) == SAMPLES[0]
    assert session.receive(codec.encode(Hello("t"))) == Hello("t")
    for message in [Ack(id="ch-1", shown=False), Respond("r"), Update(None), Unenroll("u")]:
        err = refused(session.receive, codec.encode(message))
        assert err.code == DeviceErrorCode.NOT_AUTHENTICATED
    assert refused(session.receive, codec.encode(Ack(id="ch-1", shown=False))).id == "ch-1"


@pytest.mark.parametrize("codec", CODECS, ids=SUBPROTOCOLS)
def test_enroll_and_hello_refused_once_authenticated(codec: DeviceCodec) -> None:
    session = DeviceSession(codec)
    session.authenticate("dev-1")
    assert session.authenticated and session.device_id == "dev-1"
    for message in [SAMPLES[0], Hello("t")]:
        assert refused(session.receive, codec.encode(message)).code == DeviceErrorCode.ALREADY_AUTHENTICATED
    assert session.receive(codec.encode(Respond("r"))) == Respond("r")
    with pytest.raises(RuntimeError):
        session.authenticate("dev-2")
    with pytest.raises(ValueError):
        DeviceSession(codec).authenticate("")


@pytest.mark.parametrize("codec", CODECS, ids=SUBPROTOCOLS)
def test_repeated_abuse_closes_at_max_errors(codec: DeviceCodec) -> None:
    session = DeviceSession(codec, max_errors=3)
    answers = []
    for _ in range(3):
        err = refused(session.receive, frame_of(codec, {**ACK, "shown": 0}))
        frame, close = session.error_frame(err)
        answers.append(close)
        assert codec.decode_server(frame) == Error(code="invalid_field", message=err.message, id="ch-1")
    assert answers == [False, False, True]
    assert session.errors == 3


@pytest.mark.parametrize("codec", CODECS, ids=SUBPROTOCOLS)
def test_answers_to_respond_are_not_abuse(codec: DeviceCodec) -> None:
    session = DeviceSession(codec, max_errors=1)
    for code in [DeviceErrorCode.EXPIRED, DeviceErrorCode.ALREADY_DECIDED, DeviceErrorCode.MATCH_FAILED] * 3:
        frame, close = session.error_frame(DeviceError(code, id="ch-1"), abuse=False)
        assert not close
        assert codec.decode_server(frame).code == code
    assert session.errors == 0
    assert session.error_frame(DeviceError(DeviceErrorCode.BAD_FRAME))[1] is True


def test_error_frame_survives_odd_node_messages() -> None:
    session = DeviceSession(JSON)
    frame, _ = session.error_frame(DeviceError(DeviceErrorCode.INTERNAL, "\ud800" + "m" * 5000, id="x" * 99))
    error = JSON.decode_server(frame)
    assert error.id is None and len(error.message) == 1024 and error.code == DeviceErrorCode.INTERNAL


def test_session_sends_only_server_messages() -> None:
    with pytest.raises(TypeError):
        DeviceSession(MSGPACK).send(Hello("t"))


class Pair:
    """A phone-side codec piped into a node-side session, frames passing as on a socket."""

    def __init__(self, subprotocol: str):
        self.phone = DeviceCodec(subprotocol)
        self.node = DeviceSession(DeviceCodec(subprotocol))

    def phone_sends(self, message: ClientMessage) -> ClientMessage | Error:
        """What the node's session makes of the frame, or the error the phone gets back."""
        try:
            return self.node.receive(self.phone.encode(message))
        except DeviceError as err:
            frame, _close = self.node.error_frame(err)
            return self.phone.decode_server(frame)

    def node_sends(self, message: ServerMessage) -> ServerMessage:
        return self.phone.decode_server(self.node.send(message))


@pytest.mark.parametrize("subprotocol", SUBPROTOCOLS)
def test_enroll_hello_challenge_respond_through_a_pair(subprotocol: str) -> None:
    pair = Pair(subprotocol)
    early = Ack(id="ch-1", shown=False)
    assert pair.phone_sends(early) == Error(
        code="not_authenticated", message=DESCRIPTIONS_DEVICE[DeviceErrorCode.NOT_AUTHENTICATED], id="ch-1"
    )

    enroll = Enroll(code="ENR-1", public_key=KEY, platform="sim", push_token="sim:1", device_name="sim-1")
    received = pair.phone_sends(enroll)
    assert received == enroll and received.public_key_bytes == bytes(range(32))
    enrolled = Enrolled(device_id="dev-1", account="alice", audience="node-1")
    assert pair.node_sends(enrolled) == enrolled

    assert pair.phone_sends(Hello("signed-by-dev-1")) == Hello("signed-by-dev-1")
    pair.node.authenticate("dev-1")
    pending = challenge("ch-1", match="choose", choices=("12", "47", "83"))
    welcome = pair.node_sends(Welcome(heartbeat_s=20, pending=(pending,)))
    assert welcome == Welcome(heartbeat_s=20, pending=(pending,))

    shown = welcome.pending[0]
    assert pair.phone_sends(Ack(id=shown.id, shown=True)) == Ack(id="ch-1", shown=True)
    assert pair.phone_sends(Respond("approve-ch-1-47")) == Respond("approve-ch-1-47")
    assert pair.node_sends(Result(id=shown.id, status="approved")) == Result(id="ch-1", status="approved")
    assert pair.phone_sends(Hello("again")).code == DeviceErrorCode.ALREADY_AUTHENTICATED
    assert pair.node.errors == 2


# --- fuzzing ----------------------------------------------------------------

_texts = st.text(max_size=20)
_ids = st.text(min_size=1, max_size=64)
_tokens = st.text(min_size=1, max_size=100)
_labels = st.text(min_size=1, max_size=40)


def _optional(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.none() | strategy


_resources = st.builds(
    Resource, kind=st.sampled_from(["login", "step_up", "password_reset", "device_login"]), name=_labels
)
_contexts = st.builds(
    Context,
    app=_optional(_texts),
    ip=_optional(_texts),
    location=_optional(_texts),
    user_agent=_optional(_texts),
)


@st.composite
def _challenges(draw) -> ChallengeFrame:
    created = draw(st.integers(0, 2**53 - 1))
    match = draw(st.sampled_from(["none", "choose", "type"]))
    choices = None
    if match == "choose":
        numbers = st.lists(st.text(min_size=1, max_size=16), min_size=2, max_size=9, unique=True)
        choices = tuple(draw(numbers))
    return ChallengeFrame(
        id=draw(_ids),
        account=draw(_labels),
        resource=draw(_resources),
        context=draw(_contexts),
        created_at=created,
        expires_at=draw(st.integers(created, 2**53 - 1)),
        require_biometric=draw(st.booleans()),
        match=match,
        context_hash=draw(st.text(min_size=1, max_size=64)),
        choices=choices,
    )


MESSAGES = st.one_of(
    st.builds(
        Enroll,
        code=st.text(min_size=1, max_size=256),
        public_key=st.binary(min_size=32, max_size=32).map(encode_public_key),
        platform=st.sampled_from(["ios", "android", "web", "sim"]),
        push_token=_optional(_tokens),
        device_name=_optional(_texts),
        app_version=_optional(_texts),
    ),
    st.builds(Hello, token=_tokens),
    st.builds(Ack, id=_ids, shown=st.booleans()),
    st.builds(Respond, token=_tokens),
    st.builds(Update, push_token=_optional(_tokens)),
    st.builds(Unenroll, token=_tokens),
    st.builds(Enrolled, device_id=_ids, account=_labels, audience=_labels),
    _challenges(),
    st.builds(Welcome, heartbeat_s=st.integers(1, 3600), pending=st.lists(_challenges(), max_size=2).map(tuple)),
    st.builds(Closed, id=_ids, status=st.sampled_from(["approved", "denied", "expired", "cancelled"])),
    st.builds(Result, id=_ids, status=st.sampled_from(["approved", "denied"])),
    st.builds(Error, code=st.sampled_from(list(DeviceErrorCode)), message=_texts, id=_optional(_ids)),
    st.builds(Revoked, reason=_labels),
)

_wire_ints = st.integers(-(2**63), 2**64 - 1)  # what msgpack can carry
_scalars = (
    st.none()
    | st.booleans()
    | _wire_ints
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
JSON_VALUES = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
# msgpack adds bin, ext, timestamps (an ext with its own decoding), NaN and non-string keys
MSGPACK_VALUES = st.recursive(
    _scalars
    | st.binary(max_size=30)
    | st.floats()
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=12))
    | st.builds(msgpack.Timestamp, st.integers(-(2**40), 2**40), st.integers(0, 999_999_999)),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=10) | st.binary(max_size=10) | _wire_ints, inner, max_size=4),
    max_leaves=20,
)
ALL_TYPES = sorted(CLIENT_MESSAGES) + sorted(SERVER_MESSAGES)


def outcome(decode_fn, data: Any) -> Message | DeviceErrorCode:
    """The message decoded, or the code of the DeviceError: nothing else may escape."""
    try:
        message = decode_fn(data)
    except DeviceError as err:
        assert err.code in DeviceErrorCode
        assert err.id is None or 1 <= len(err.id) <= 64
        return err.code
    assert isinstance(message, Message)
    return message


def every_decoder(data: Any) -> list[Message | DeviceErrorCode]:
    return [outcome(codec.decode_client, data) for codec in CODECS] + [
        outcome(codec.decode_server, data) for codec in CODECS
    ]


@given(MESSAGES)
@FUZZ
def test_fuzz_any_message_round_trips(message: Message) -> None:
    for codec in CODECS:
        assert decode(codec, codec.encode(message), message) == message


@given(st.binary(max_size=200) | st.text(max_size=200))
@FUZZ
def test_fuzz_arbitrary_frames(data: bytes | str) -> None:
    every_decoder(data)


@given(MSGPACK_VALUES, st.sampled_from(ALL_TYPES) | _texts)
@FUZZ
def test_fuzz_arbitrary_msgpack_values(value: Any, kind: str) -> None:
    every_decoder(msgpack.packb(value, use_bin_type=True))
    if isinstance(value, dict):
        every_decoder(msgpack.packb({**value, "type": kind}, use_bin_type=True))


@given(JSON_VALUES, st.sampled_from(ALL_TYPES) | _texts)
@FUZZ
def test_fuzz_arbitrary_json_values(value: Any, kind: str) -> None:
    every_decoder(json.dumps(value))
    if isinstance(value, dict):
        every_decoder(json.dumps({**value, "type": kind}))


@given(st.sampled_from(ALL_TYPES) | _texts, st.dictionaries(st.text(max_size=10), _scalars, max_size=5))
@FUZZ
def test_fuzz_random_type_strings(kind: str, fields: dict[str, Any]) -> None:
    frame = {**fields, "type": kind}
    for codec in CODECS:
        for decode_fn in (codec.decode_client, codec.decode_server):
            result = outcome(decode_fn, frame_of(codec, frame))
            if kind not in CLIENT_MESSAGES and kind not in SERVER_MESSAGES:
                assert result == DeviceErrorCode.UNKNOWN_TYPE


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key or index path inside a decoded frame."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    paths = []
    for key, item in items:
        paths.append(prefix + (key,))
        paths.extend(_paths(item, prefix + (key,)))
    return paths


@given(MESSAGES, st.data())
@FUZZ
def test_fuzz_mutated_messages(message: Message, data: st.DataObject) -> None:
    wire = raw_map(MSGPACK, MSGPACK.encode(message))
    *parents, last = data.draw(st.sampled_from(_paths(wire)))
    target = wire
    for key in parents:
        target = target[key]
    if data.draw(st.booleans()):
        del target[last]
    else:
        target[last] = data.draw(JSON_VALUES)
    as_json, as_msgpack = json.dumps(wire), msgpack.packb(wire)
    every_decoder(as_json)
    every_decoder(as_msgpack)
    results = []
    for codec, frame in [(JSON, as_json), (MSGPACK, as_msgpack)]:
        for decode_fn in (codec.decode_client, codec.decode_server):
            result = outcome(decode_fn, frame)
            results.append(result)
            if isinstance(result, Message):  # whatever is accepted can be sent on again
                assert decode(codec, codec.encode(result), result) == result
    # the same map gets the same answer whichever encoding carried it
    assert results[:2] == results[2:]


@given(MESSAGES, MSGPACK_VALUES, st.data())
@FUZZ
def test_fuzz_msgpack_only_values_in_fields(message: Message, value: Any, data: st.DataObject) -> None:
    wire = raw_map(MSGPACK, MSGPACK.encode(message))
    wire[data.draw(st.sampled_from(sorted(wire)))] = value
    every_decoder(msgpack.packb(wire, use_bin_type=True))
