"""The msgpack-RPC framing state machine, without sockets.

Covers round trips, pipelining at any chunking, the 1 MiB limit (including
that a huge declared length is refused without being allocated), the
non-fatal handling of every invalid message shape, the fatal handling of
undecodable streams, the reply policy, and fuzzing: whatever bytes arrive,
only RpcFramingError with a code from RpcErrorCode may escape.
"""

from __future__ import annotations

import dataclasses
import struct
import tracemalloc

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import RpcError, RpcErrorCode
from engine.protocol.rpc import (
    ERROR_NOTIFICATION,
    MAX_MESSAGE_BYTES,
    MAX_MSGID,
    Notification,
    Request,
    Response,
    RpcConnection,
    RpcFramingError,
    RpcMessage,
)

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def drain(conn: RpcConnection) -> list[RpcMessage]:
    """Every message available now; framing errors propagate."""
    messages = []
    while (message := conn.next_event()) is not None:
        messages.append(message)
    return messages


def outcomes(conn: RpcConnection, limit: int = 10_000) -> list[RpcMessage | RpcFramingError]:
    """Messages and framing errors until more data is needed or the stream is dead."""
    seen: list[RpcMessage | RpcFramingError] = []
    for _ in range(limit):
        try:
            message = conn.next_event()
        except RpcFramingError as exc:
            seen.append(exc)
            if exc.fatal:
                return seen
            continue
        if message is None:
            return seen
        seen.append(message)
    raise AssertionError("next_event never asked for more data")


def pipe(data: bytes) -> list[RpcMessage]:
    """Decode `data` on a fresh connection, as the peer of the one that encoded it."""
    receiver = RpcConnection()
    receiver.receive_data(data)
    return drain(receiver)


def expect_error(conn: RpcConnection) -> RpcFramingError:
    with pytest.raises(RpcFramingError) as info:
        conn.next_event()
    return info.value


# -- round trips ---------------------------------------------------------------


PARAM_VALUES = [
    [],
    [None, True, False, 0, -1, 2**64 - 1, -(2**63), 1.5, "héllo", b"\x00\xff"],
    [{"user": "alice", "context": {"ip": "192.0.2.1", "nested": [1, [2, [3]]]}}],
    [{1: "int key", None: "nil key", b"k": "bin key"}],
]


@pytest.mark.parametrize("params", PARAM_VALUES)
def test_request_round_trip(params):
    sender = RpcConnection()
    assert pipe(sender.request(7, "challenge.create", params)) == [Request(7, "challenge.create", params)]


@pytest.mark.parametrize("msgid", [0, 1, MAX_MSGID])
def test_response_round_trip_at_msgid_bounds(msgid):
    sender = RpcConnection()
    data = sender.response(msgid, None, {"id": "c1", "status": "pending"})
    assert pipe(data) == [Response(msgid, None, {"id": "c1", "status": "pending"})]


def test_error_response_round_trip_with_details():
    sender = RpcConnection()
    error = ["push_limited", "too many open challenges", {"retry_after_s": 30}]
    assert pipe(sender.response(3, error, None)) == [Response(3, error, None)]


def test_response_encodes_an_rpc_error_as_its_wire_array():
    sender = RpcConnection()
    error = RpcError(RpcErrorCode.NOT_FOUND, details={"id": "c9"})
    [message] = pipe(sender.response(4, error, None))
    assert message == Response(4, ["not_found", "no such object", {"id": "c9"}], None)


def test_notification_round_trip():
    sender = RpcConnection()
    event = {"type": "decided", "id": "c1", "decision": "approved"}
    assert pipe(sender.notification("event", [event])) == [Notification("event", [event])]


def test_binary_stays_bytes_and_text_stays_str():
    sender = RpcConnection()
    [message] = pipe(sender.request(1, "m", [b"raw", "text"]))
    assert message.params == [b"raw", "text"]
    assert type(message.params[0]) is bytes and type(message.params[1]) is str


def test_wire_layout_is_plain_msgpack_rpc():
    sender = RpcConnection()
    assert msgpack.unpackb(sender.request(5, "m", [1])) == [0, 5, "m", [1]]
    assert msgpack.unpackb(sender.response(5, None, "ok")) == [1, 5, None, "ok"]
    assert msgpack.unpackb(sender.notification("event", [1])) == [2, "event", [1]]


def test_messages_are_frozen_and_slotted():
    request = Request(1, "m", [])
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.msgid = 2  # type: ignore[misc]
    assert not hasattr(request, "__dict__")
    assert isinstance(request, RpcMessage)


@pytest.mark.parametrize(
    "build",
    [
        lambda: Request(-1, "m", []),
        lambda: Request(2**32, "m", []),
        lambda: Request(True, "m", []),
        lambda: Request(1, b"m", []),
        lambda: Request(1, "m", {"a": 1}),
        lambda: Response("1", None, None),
        lambda: Notification(5, []),
        lambda: Notification("m", "not a list"),
    ],
)
def test_messages_validate_on_construction(build):
    with pytest.raises((TypeError, ValueError)):
        build()


def test_encoders_refuse_invalid_fields():
    conn = RpcConnection()
    with pytest.raises(ValueError):
        conn.request(2**32, "m", [])
    with pytest.raises(TypeError):
        conn.notification("event", "x")
    with pytest.raises(TypeError):
        conn.request(1, "m", [object()])


def test_encoders_refuse_a_message_over_the_limit():
    conn = RpcConnection(max_message_bytes=100)
    conn.request(1, "m", ["x" * 80])
    with pytest.raises(ValueError, match="limit"):
        conn.request(1, "m", ["x" * 100])


def test_encoders_accept_tuples_as_params():
    conn = RpcConnection()
    assert pipe(conn.request(1, "m", (1, 2))) == [Request(1, "m", [1, 2])]


# -- pipelining ----------------------------------------------------------------


def pipelined_stream(count: int) -> tuple[bytes, list[RpcMessage]]:
    sender = RpcConnection()
    chunks, expected = [], []
    for i in range(count):
        if i % 3 == 0:
            chunks.append(sender.request(i, "m", [i]))
            expected.append(Request(i, "m", [i]))
        elif i % 3 == 1:
            chunks.append(sender.response(i, None, i))
            expected.append(Response(i, None, i))
        else:
            chunks.append(sender.notification("event", [i]))
            expected.append(Notification("event", [i]))
    return b"".join(chunks), expected


def test_pipelined_messages_in_one_chunk():
    data, expected = pipelined_stream(30)
    assert pipe(data) == expected


def test_pipelined_messages_byte_by_byte():
    data, expected = pipelined_stream(30)
    receiver = RpcConnection()
    received = []
    for i in range(len(data)):
        receiver.receive_data(data[i : i + 1])
        received.extend(drain(receiver))
    assert received == expected


def test_a_chunk_over_the_limit_made_of_small_messages_is_fine():
    data, expected = pipelined_stream(200_000)
    assert len(data) > 2 * MAX_MESSAGE_BYTES
    assert pipe(data) == expected


def test_messages_up_to_the_limit_pass_in_odd_chunks():
    sender = RpcConnection()
    big = sender.request(1, "m", ["x" * (MAX_MESSAGE_BYTES - 100)])
    assert MAX_MESSAGE_BYTES - 100 < len(big) <= MAX_MESSAGE_BYTES
    data = big + sender.request(2, "m", []) + big
    receiver = RpcConnection()
    received = []
    for start in range(0, len(data), 333_333):
        receiver.receive_data(data[start : start + 333_333])
        received.extend(drain(receiver))
    assert [m.msgid for m in received] == [1, 2, 1]


def test_empty_data_is_no_event():
    receiver = RpcConnection()
    receiver.receive_data(b"")
    assert receiver.next_event() is None


# -- the size limit ------------------------------------------------------------


def test_limit_is_exact():
    sender = RpcConnection()
    fits = sender.request(1, "m", ["x" * 50])
    receiver = RpcConnection(max_message_bytes=len(fits))
    receiver.receive_data(fits)
    assert drain(receiver) == [Request(1, "m", ["x" * 50])]

    over = sender.request(1, "m", ["x" * 51])
    receiver = RpcConnection(max_message_bytes=len(fits))
    receiver.receive_data(over)
    error = expect_error(receiver)
    assert (error.code, error.fatal, error.msgid) == (RpcErrorCode.TOO_LARGE, True, None)


def test_one_message_over_one_mib_is_fatal_too_large_after_earlier_messages():
    sender = RpcConnection()
    small = sender.request(1, "m", [])
    huge = msgpack.packb([0, 2, "m", ["x" * MAX_MESSAGE_BYTES]], use_bin_type=True)
    receiver = RpcConnection()
    receiver.receive_data(small + huge + small)
    assert receiver.next_event() == Request(1, "m", [])
    error = expect_error(receiver)
    assert error.code == RpcErrorCode.TOO_LARGE and error.fatal and error.msgid is None
    # The stream stays dead: later data is ignored and the error repeats.
    receiver.receive_data(small)
    assert expect_error(receiver).code == RpcErrorCode.TOO_LARGE


def test_message_over_the_limit_spread_over_many_small_elements_is_caught():
    # No single element is large, so only counting the message's bytes can
    # catch it: the decoder buffer alone would never fill.
    huge = msgpack.packb([0, 1, "m", ["y" * 1000] * 2000], use_bin_type=True)
    receiver = RpcConnection()
    for start in range(0, len(huge), 4096):
        receiver.receive_data(huge[start : start + 4096])
        try:
            receiver.next_event()
        except RpcFramingError as exc:
            assert exc.code == RpcErrorCode.TOO_LARGE
            assert start < MAX_MESSAGE_BYTES + 4096  # caught as soon as the limit was crossed
            return
    raise AssertionError("the oversized message was accepted")


@pytest.mark.parametrize(
    "header",
    [
        b"\xdb" + struct.pack(">I", 2**31),  # str 32 of 2 GiB
        b"\xc6" + struct.pack(">I", 2**31),  # bin 32 of 2 GiB
        b"\xc9" + struct.pack(">I", 2**31) + b"\x05",  # ext 32 of 2 GiB
    ],
)
def test_declared_two_gib_string_fails_within_the_limit_without_allocating_it(header):
    receiver = RpcConnection()
    tracemalloc.start()
    try:
        receiver.receive_data(b"\x94\x00\x01" + header)
        fed = len(header) + 3
        chunk = b"a" * 65536
        while fed <= MAX_MESSAGE_BYTES:
            assert receiver.next_event() is None
            receiver.receive_data(chunk)
            fed += len(chunk)
        error = expect_error(receiver)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Refused one chunk past the limit, not after 2 GiB.
    assert error.code == RpcErrorCode.TOO_LARGE and error.fatal
    assert peak < 8 * MAX_MESSAGE_BYTES  # the 2 GiB were never allocated


def test_declared_four_billion_element_array_fails_at_once():
    receiver = RpcConnection()
    tracemalloc.start()
    try:
        receiver.receive_data(b"\xdd\xff\xff\xff\xff\x00")
        error = expect_error(receiver)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.fatal and error.code in set(RpcErrorCode)
    assert peak < 8 * MAX_MESSAGE_BYTES


# -- invalid shapes: non-fatal -------------------------------------------------


INVALID_SHAPES = [
    # (value, msgid the server can answer)
    (42, None),
    ("text", None),
    ({"type": 0}, None),
    ([], None),
    ([0, 5, "m"], 5),  # request with 3 elements
    ([0, 5, "m", [], "extra"], 5),
    ([1, 6, None], 6),  # response with 3 elements
    ([2, "event"], None),  # notification with 2 elements
    ([2, "event", [], 9], None),
    ([0, 7, 123, []], 7),  # method not a str
    ([0, 7, b"m", []], 7),  # method as bin
    ([0, 8, "m", {"a": 1}], 8),  # params not a list
    ([0, 8, "m", "p"], 8),
    ([2, "event", None], None),
    ([2, 5, []], None),  # notification whose method is an int
    ([0, -1, "m", []], None),  # msgid negative
    ([0, 2**32, "m", []], None),  # msgid over uint32
    ([0, "9", "m", []], None),  # msgid a str
    ([0, True, "m", []], None),  # msgid a bool
    ([0, 1.0, "m", []], None),  # msgid a float
    ([1, -3, None, 1], None),
    ([3, 11, "m", []], 11),  # unknown type
    ([-1, 12, "m", []], 12),
    (["0", 13, "m", []], 13),  # type as a str
    ([False, 14, "m", []], 14),  # type as a bool, which is not 0
]


@pytest.mark.parametrize(("value", "msgid"), INVALID_SHAPES)
def test_invalid_shape_is_non_fatal_and_the_next_message_parses(value, msgid):
    sender = RpcConnection()
    receiver = RpcConnection()
    receiver.receive_data(msgpack.packb(value, use_bin_type=True) + sender.request(99, "next", [1]))
    error = expect_error(receiver)
    assert error.code == RpcErrorCode.INVALID_REQUEST
    assert error.fatal is False
    assert error.msgid == msgid
    assert receiver.next_event() == Request(99, "next", [1])
    assert receiver.next_event() is None


def test_several_invalid_messages_in_a_row_each_reported_once():
    sender = RpcConnection()
    data = msgpack.packb([0, 1, "m"]) + msgpack.packb([9, 2]) + sender.notification("ok", [])
    receiver = RpcConnection()
    receiver.receive_data(data)
    seen = outcomes(receiver)
    assert [type(item) for item in seen] == [RpcFramingError, RpcFramingError, Notification]
    assert [item.msgid for item in seen[:2]] == [1, 2]


# -- undecodable streams: fatal ------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xc1", id="reserved-byte"),
        pytest.param(b"\x94\x00\x01\xa2\xff\xfe\x90", id="invalid-utf8-method"),
        pytest.param(b"\x94\x00\x01\xa1m\x91\x81\x91\x01\x02", id="array-as-map-key"),
        pytest.param(b"\x94\x00\x01\xa1m\x91\x81\x81\x01\x02\x03", id="map-as-map-key"),
        pytest.param(b"\x91" * 5000, id="nesting-too-deep"),
        pytest.param(b"\xc7\x03\xff\x00\x00\x00", id="timestamp-of-three-bytes"),
    ],
)
def test_undecodable_stream_is_fatal(data):
    receiver = RpcConnection()
    receiver.receive_data(data + b"\x00" * 8)
    error = expect_error(receiver)
    assert error.fatal is True
    assert error.msgid is None
    assert error.code == RpcErrorCode.INVALID_REQUEST
    assert expect_error(receiver).fatal  # and again


def test_valid_messages_before_garbage_are_still_delivered():
    sender = RpcConnection()
    receiver = RpcConnection()
    receiver.receive_data(sender.request(1, "a", []) + sender.request(2, "b", []) + b"\xc1" + sender.request(3, "c", []))
    assert receiver.next_event() == Request(1, "a", [])
    assert receiver.next_event() == Request(2, "b", [])
    assert expect_error(receiver).fatal


def test_incomplete_message_is_not_an_error():
    sender = RpcConnection()
    data = sender.request(1, "m", ["payload"])
    receiver = RpcConnection()
    receiver.receive_data(data[:-1])
    assert receiver.next_event() is None
    receiver.receive_data(data[-1:])
    assert receiver.next_event() == Request(1, "m", ["payload"])


# -- the reply policy ----------------------------------------------------------


def test_error_reply_answers_the_recovered_msgid():
    server = RpcConnection()
    server.receive_data(msgpack.packb([0, 17, "m", "not a list"]))
    error = expect_error(server)
    [reply] = pipe(server.error_reply(error))
    assert reply == Response(17, ["invalid_request", error.message], None)


def test_error_reply_without_msgid_is_an_error_notification():
    server = RpcConnection()
    server.receive_data(msgpack.packb([0, -5, "m", []]))
    error = expect_error(server)
    [reply] = pipe(server.error_reply(error))
    assert reply == Notification(ERROR_NOTIFICATION, [["invalid_request", error.message]])


def test_fatal_error_reply_is_a_notification_never_a_made_up_response():
    server = RpcConnection(max_message_bytes=64)
    server.receive_data(msgpack.packb([0, 3, "m", ["x" * 100]]))
    error = expect_error(server)
    assert error.fatal
    [reply] = pipe(server.error_reply(error))
    assert reply == Notification(ERROR_NOTIFICATION, [["too_large", error.message]])


# -- fuzzing -------------------------------------------------------------------

CODES = set(RpcErrorCode)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
hashable_keys = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=10) | st.binary(max_size=10)
msgpack_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(hashable_keys, children, max_size=5),
    max_leaves=10,
)


def check_outcomes(seen: list[RpcMessage | RpcFramingError]) -> None:
    for item in seen:
        if isinstance(item, RpcFramingError):
            assert item.code in CODES
            assert item.msgid is None or 0 <= item.msgid <= MAX_MSGID
        else:
            assert isinstance(item, (Request, Response, Notification))


@FUZZ
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=6))
def test_fuzz_arbitrary_bytes_only_raise_framing_errors(data, cuts):
    receiver = RpcConnection(max_message_bytes=256)
    seen: list = []
    start = 0
    for cut in sorted(cuts) + [len(data)]:
        receiver.receive_data(data[start:cut])
        start = max(start, cut)
        seen.extend(outcomes(receiver))
    check_outcomes(seen)
    if any(isinstance(item, RpcFramingError) and item.fatal for item in seen):
        assert expect_error(receiver).fatal


def is_valid_message(value) -> bool:
    """An independent statement of the contract, to check the decoder against."""

    def uint32(x):
        return type(x) is int and 0 <= x <= MAX_MSGID

    if not isinstance(value, list) or not value or type(value[0]) is not int:
        return False
    match value:
        case [0, msgid, str(), list()]:
            return uint32(msgid)
        case [1, msgid, _, _]:
            return uint32(msgid)
        case [2, str(), list()]:
            return True
    return False


@FUZZ
@given(value=msgpack_values)
def test_fuzz_arbitrary_msgpack_values_are_messages_or_non_fatal_errors(value):
    receiver = RpcConnection()
    receiver.receive_data(msgpack.packb(value, use_bin_type=True) + msgpack.packb([2, "after", []]))
    seen = outcomes(receiver)
    check_outcomes(seen)
    assert seen[-1] == Notification("after", [])
    [first] = seen[:-1]
    if is_valid_message(value):
        assert isinstance(first, RpcMessage)
    else:
        assert isinstance(first, RpcFramingError)
        assert first.code == RpcErrorCode.INVALID_REQUEST and not first.fatal


valid_messages = st.one_of(
    st.tuples(st.just(0), st.integers(0, MAX_MSGID), st.text(max_size=10), st.lists(msgpack_values, max_size=3)),
    st.tuples(st.just(1), st.integers(0, MAX_MSGID), msgpack_values, msgpack_values),
    st.tuples(st.just(2), st.text(max_size=10), st.lists(msgpack_values, max_size=3)),
).map(list)


@st.composite
def mutated_messages(draw):
    message = draw(valid_messages)
    mutation = draw(st.sampled_from(["replace", "drop", "append", "none"]))
    if mutation == "replace":
        message[draw(st.integers(0, len(message) - 1))] = draw(msgpack_values)
    elif mutation == "drop":
        del message[draw(st.integers(0, len(message) - 1))]
    elif mutation == "append":
        message.append(draw(msgpack_values))
    return message


@FUZZ
@given(message=mutated_messages())
def test_fuzz_mutated_messages(message):
    receiver = RpcConnection()
    receiver.receive_data(msgpack.packb(message, use_bin_type=True) + msgpack.packb([0, 1, "after", []]))
    seen = outcomes(receiver)
    check_outcomes(seen)
    assert seen[-1] == Request(1, "after", [])
    [first] = seen[:-1]
    if is_valid_message(message):
        assert isinstance(first, RpcMessage)
        # The message says what was sent: encoding it again gives the same value.
        fields = [getattr(first, f.name) for f in dataclasses.fields(first)]
        assert msgpack.packb([message[0], *fields], use_bin_type=True) == msgpack.packb(message, use_bin_type=True)
    else:
        assert isinstance(first, RpcFramingError) and not first.fatal
        recoverable = (
            len(message) >= 2
            and not (type(message[0]) is int and message[0] == 2)
            and type(message[1]) is int
            and 0 <= message[1] <= MAX_MSGID
        )
        assert first.msgid == (message[1] if recoverable else None)


@FUZZ
@given(
    messages=st.lists(valid_messages, min_size=1, max_size=5),
    garbage=st.binary(min_size=1, max_size=40),
    chunk=st.integers(1, 64),
)
def test_fuzz_valid_messages_then_garbage_at_any_chunking(messages, garbage, chunk):
    data = b"".join(msgpack.packb(m, use_bin_type=True) for m in messages) + garbage
    receiver = RpcConnection()
    seen: list = []
    for start in range(0, len(data), chunk):
        receiver.receive_data(data[start : start + chunk])
        seen.extend(outcomes(receiver))
    check_outcomes(seen)
    # The valid prefix always comes through intact, whatever follows it.
    decoded = [item for item in seen[: len(messages)]]
    assert all(isinstance(item, RpcMessage) for item in decoded)
    assert len(decoded) == len(messages)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(keys=st.lists(st.lists(st.integers(0, 3), max_size=2), min_size=1, max_size=3))
def test_fuzz_unhashable_keys_are_fatal_framing_errors(keys):
    # msgpack can carry a map whose keys are arrays; Python cannot hold it.
    body = bytes([0x80 | len(keys)])
    for key in keys:
        body += msgpack.packb(key) + b"\x00"
    receiver = RpcConnection()
    receiver.receive_data(b"\x94\x00\x01\xa1m\x91" + body)
    error = expect_error(receiver)
    assert error.fatal and error.code == RpcErrorCode.INVALID_REQUEST
