"""Hypothesis throws garbage at a real node's RPC port; the node shrugs."""

from __future__ import annotations

import msgpack
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.node import open_node
from tests.conftest import operator_key, rpc_client


INTS = st.integers(-(2**63), 2**64 - 1)
GARBAGE = st.one_of(
    st.binary(max_size=200),
    st.lists(st.one_of(INTS, st.text(max_size=10), st.none(), st.lists(INTS, max_size=3)),
             max_size=6).map(msgpack.packb),
    st.tuples(st.integers(-5, 5), st.integers(-10, 2**33), st.text(max_size=20),
              st.lists(INTS, max_size=3)).map(lambda t: msgpack.packb(list(t))),
    st.tuples(st.just(0), st.integers(0, 2**32 - 1), st.sampled_from(["challenge.create", "push.device",
                                                                       "policy.set", "audit.query"]),
              st.lists(st.one_of(INTS, st.text(max_size=5), st.none(),
                                 st.dictionaries(st.text(max_size=5), INTS, max_size=3)),
                       max_size=5)).map(lambda t: msgpack.packb(list(t))),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(GARBAGE, min_size=1, max_size=4))
def test_fuzzed_input_never_hurts_the_node(config, chunks):
    """Garbage, wrong arity, wrong types and unknown methods, authenticated or
    not: each gets an answer or a hang-up, and the node keeps serving."""

    async def one_example() -> None:
        async with open_node(config) as node:
            for authenticate in (False, True):
                stream = await trio.open_tcp_stream("127.0.0.1", node.rpc_port)
                try:
                    if authenticate:
                        await stream.send_all(msgpack.packb([0, 0, "auth", [operator_key(node)]]))
                    for chunk in chunks:
                        await stream.send_all(chunk)
                    with trio.move_on_after(0.02):
                        await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    pass
                finally:
                    await stream.aclose()
            async with rpc_client(node) as rpc:
                assert (await rpc.call("policy.get"))["challenge_ttl_s"] == 60
            assert node.stats.counters["rpc_internal_errors"] == 0
            assert node.stats.counters["rpc_connection_failures"] == 0

    trio.run(one_example)
