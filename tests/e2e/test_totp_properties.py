"""Properties of totp.verify, checked by hypothesis against one real node.

The node runs in a thread of its own for the whole test, so that hypothesis
can drive many examples (each one a short Trio run of RPC calls) without
starting a node per example.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import trio
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from engine.config import Config
from engine.node import open_node
from engine.rpc_client import RpcClient
from engine.totp.codes import TotpAlgorithm, TotpParams, base32_secret, code_at_step, time_step
from simulator.authenticator import Authenticator
from tests.e2e.test_totp import REJECTED, T0_MS, SettableClock
from tests.engine.totp.test_codes import RFC_SECRETS


@dataclass
class ThreadedNode:
    rpc_port: int
    api_key: str
    clock: SettableClock

    def call(self, *calls: tuple) -> list:
        """Run the RPC calls in order on one connection; their results."""

        async def run() -> list:
            async with RpcClient.connect("127.0.0.1", self.rpc_port, api_key=self.api_key) as rpc:
                return [await rpc.call(*call) for call in calls]

        return trio.run(run)


@pytest.fixture(scope="module")
def threaded_node(tmp_path_factory) -> Iterator[ThreadedNode]:
    from tests.conftest import node_config

    config: Config = node_config(tmp_path_factory.mktemp("totp-props"))
    clock = SettableClock(T0_MS)
    ready = threading.Event()
    handle: dict = {}

    async def serve() -> None:
        async with open_node(config, clock=clock) as node:
            handle["node"] = ThreadedNode(node.rpc_port, next(iter(node.api_keys)), clock)
            handle["token"] = trio.lowlevel.current_trio_token()
            handle["stop"] = trio.Event()
            ready.set()
            await handle["stop"].wait()

    thread = threading.Thread(target=trio.run, args=(serve,), daemon=True)
    thread.start()
    assert ready.wait(30), "the node did not start"
    yield handle["node"]
    trio.from_thread.run_sync(handle["stop"].set, trio_token=handle["token"])
    thread.join(30)


def enroll(node: ThreadedNode, user_id: str) -> Authenticator:
    app = Authenticator(now=lambda: node.clock.now_ms() / 1000)
    (started,) = node.call(("totp.begin_enrollment", user_id, {}))
    app.scan(started["otpauth_uri"])
    assert node.call(("totp.confirm", user_id, app.code(user_id))) == [{"confirmed": True}]
    return app


@settings(max_examples=150, deadline=None)
@given(code=st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=300))
def test_no_code_string_crashes_verify(threaded_node, code):
    users = ("nemo", "otto")  # nemo has no secret; otto has one (and soon a lockout)
    if threaded_node.call(("totp.status", "otto"))[0]["confirmed"] is False:
        enroll(threaded_node, "otto")
    for user in users:
        (answer,) = threaded_node.call(("totp.verify", user, code))
        assert answer == REJECTED or (user == "otto" and answer == {"valid": True})


_people = itertools.count()


@settings(max_examples=40, deadline=None)
@given(offset_s=st.integers(min_value=0, max_value=10**6), drift=st.integers(min_value=-1, max_value=1))
def test_valid_codes_for_other_users_never_pass(threaded_node, offset_s, drift):
    n = next(_people)
    threaded_node.clock.ms = T0_MS + offset_s * 1000
    olga, pia = enroll(threaded_node, f"olga{n}"), enroll(threaded_node, f"pia{n}")
    threaded_node.clock.ms += 90_000  # past the confirmation's step, whatever the drift
    code = olga.code(f"olga{n}", offset_steps=drift)
    assume(all(code != pia.code(f"pia{n}", offset_steps=d) for d in (-1, 0, 1)))
    refused, accepted = threaded_node.call(("totp.verify", f"pia{n}", code), ("totp.verify", f"olga{n}", code))
    assert refused == REJECTED
    # The same code still works for its owner: the refusal was about whose code it was.
    assert accepted == {"valid": True}


def test_the_simulated_app_computes_what_the_node_accepts():
    secret = RFC_SECRETS[TotpAlgorithm.SHA1]
    app = Authenticator(now=lambda: 1111111109.0)
    app.scan(f"otpauth://totp/x:y?secret={base32_secret(secret)}&issuer=x&digits=8")
    assert app.code("y") == code_at_step(secret, TotpParams(digits=8), time_step(1111111109, 30)) == "07081804"
