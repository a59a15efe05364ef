"""A phone under load against a real node: it answers by plan, injects its fault, and
survives losing its socket at awkward moments, as a storm makes it do by the hundred."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from simulator.faults import Fault
from simulator.fleet import enroll_fleet
from simulator.loadphone import LoadPhone, Plan
from simulator.mix import Action
from simulator.report import Report
from tests.conftest import ws_url

pytestmark = pytest.mark.trio

RESOURCE = {"kind": "login", "name": "loadphone test"}


@asynccontextmanager
async def load_phone(node, rpc, user: str, report: Report) -> AsyncIterator[tuple[LoadPhone, trio.Nursery]]:
    """An enrolled, not yet connected phone; closed and its tasks cancelled at the end."""
    [entry] = await enroll_fleet(rpc, ws_url(node), [user])
    async with trio.open_nursery() as nursery:
        phone = LoadPhone(entry.phone(ws_url(node), nursery), report, ack_timeout_s=5.0, seed=1)
        try:
            yield phone, nursery
        finally:
            phone.stop()
            with trio.CancelScope(shield=True):
                await phone.phone.close()
            nursery.cancel_scope.cancel()


def plan(action: Action, fault: Fault | None = None) -> Plan:
    return Plan(action, think_s=0.0, biometric=True, fault=fault, created_at=trio.current_time())


async def challenge(rpc, phone: LoadPhone, ttl_s: int = 3) -> str:
    created = await rpc.call("challenge.create", phone.user_id, RESOURCE, None, {"ttl_s": ttl_s})
    phone.plan.code_ready.set()
    return created["challenge_id"]


async def test_a_phone_answers_by_plan_and_checks_a_replay(node, rpc):
    report = Report()
    async with load_phone(node, rpc, "lp-replay", report) as (phone, nursery):
        await nursery.start(phone.run)
        phone.plan = plan(Action.APPROVE, Fault.REPLAY)
        cid = await challenge(rpc, phone)
        view = await rpc.call("challenge.wait", cid, 5)
        with trio.fail_after(5):
            await phone.plan.handled.wait()
        assert view["status"] == "approved"
        assert report.faults.injected == {"replay": 1}
        assert report.faults.passed == {"replay": 1}
        assert report.latencies["create_to_delivered"].get_total_count() == 1


async def test_a_challenge_that_arrives_in_welcome_pending_is_answered(node, rpc):
    # A challenge created while the phone is off the network (in a storm: between the
    # driver's pick and the node's send) reaches it only in welcome.pending on reconnect.
    report = Report()
    async with load_phone(node, rpc, "lp-pending", report) as (phone, nursery):
        phone.plan = plan(Action.APPROVE)
        cid = await challenge(rpc, phone)
        await nursery.start(phone.run)  # connects now: welcome.pending holds the challenge
        view = await rpc.call("challenge.wait", cid, 5)
        assert view["status"] == "approved", "the phone never answered the challenge in welcome.pending"
        with trio.fail_after(2):
            await phone.plan.handled.wait()


async def test_losing_the_socket_while_waiting_for_an_answer_does_not_stall_the_phone(node, rpc):
    # The skewed respond goes out, then the network goes: the node's error is lost with
    # the socket. The phone must notice, reconnect and answer the re-sent challenge
    # well within its 3 s lifetime, not wait out its 10 s answer timeout.
    report = Report()
    async with load_phone(node, rpc, "lp-lost", report) as (phone, nursery):
        await nursery.start(phone.run)
        sent = phone.phone.send_token
        lost = trio.Event()

        async def send_then_lose_the_network(token: str) -> None:
            await sent(token)
            if not lost.is_set():
                lost.set()
                await phone.drop()

        phone.phone.send_token = send_then_lose_the_network
        phone.plan = plan(Action.APPROVE, Fault.SKEW)
        start = trio.current_time()
        cid = await challenge(rpc, phone)
        view = await rpc.call("challenge.wait", cid, 5)
        assert lost.is_set()
        assert view["status"] == "approved", f"ended {view['status']} after {trio.current_time() - start:.1f} s"
        with trio.fail_after(2):
            await phone.plan.handled.wait()
        assert report.faults.failed == {}  # a lost socket proves nothing either way


async def test_losing_the_socket_just_as_the_phone_acks_is_survived(node, rpc):
    # In a storm the socket can go in the instant the phone acks, before its reader has
    # noticed: the phone must wait for its reconnect and answer the re-sent challenge,
    # not burn its retries on the dead socket and leave the challenge to expire.
    report = Report()
    async with load_phone(node, rpc, "lp-ack", report) as (phone, nursery):
        await nursery.start(phone.run)
        ack = phone.phone.ack
        lost = trio.Event()

        async def lose_the_network_then_ack(challenge_id: str, shown: bool = True) -> None:
            if not lost.is_set():
                lost.set()
                phone.phone._stream.socket.close()  # gone, and no task has had a chance to see it
            await ack(challenge_id, shown)

        phone.phone.ack = lose_the_network_then_ack
        phone.plan = plan(Action.APPROVE)
        cid = await challenge(rpc, phone)
        view = await rpc.call("challenge.wait", cid, 5)
        assert lost.is_set()
        assert view["status"] == "approved", "the phone gave up on a challenge the node re-sent on reconnect"
        assert phone.reconnects == 1
