"""A short simulate run in-process against a real node: every fault injected, every outcome checked."""

from __future__ import annotations

import dataclasses
import gc
import json
import warnings

import pytest
import trio

from engine.config import Policy
from simulator.faults import Fault
from simulator.fleet import enroll_fleet
from simulator.loadphone import LoadPhone
from simulator.report import Report
from simulator.worker import LoadSpec, _storm, run_worker
from tests.conftest import node_config, operator_key, ws_url

pytestmark = pytest.mark.trio

PER_CHALLENGE = [f for f in Fault if f.per_challenge]


@pytest.fixture
def config(tmp_path):
    # ack-delay acks after ack_timeout_s: keep it short so that a ttl of 3 s covers it
    return node_config(tmp_path / "node", policy=Policy(ack_timeout_s=0.5, max_per_user_per_hour=1000))


def spec_for(node, **changes) -> LoadSpec:
    spec = LoadSpec(rpc_port=node.rpc_port, api_key=operator_key(node), ws_url=ws_url(node), rpc_connections=4)
    return dataclasses.replace(spec, **changes)


async def run(spec: LoadSpec) -> tuple[Report, dict, list[dict]]:
    progress: list[dict] = []
    final = await run_worker(spec, progress.append)
    json.dumps(final)  # what a worker process prints must be JSON
    return Report.from_dict(final["report"]), final, progress


async def test_a_short_run_with_every_fault_passes_every_check(node, rpc):
    spec = spec_for(node, phones=300, rate=100, duration_s=2.5, mix="approve=55,deny=15,fraud=10,ignore=20",
                    think="uniform:0:0.05", offline=0.1, encoding="mixed", ttl_s=3, storm_at_s=1.2, seed=7,
                    faults=",".join(f"{f}=0.05" for f in PER_CHALLENGE))
    report, final, progress = await run(spec)
    text = report.render()
    assert report.failed == 0, text
    assert "-> PASS" in text

    # the fleet: enrolled through the real flow, returned for saving, connected
    assert len(final["fleet"]) == 300
    counters = report.counters
    assert counters["phones"] == 300
    assert 10 <= counters["phones_offline"] <= 60
    assert counters["phones_connected"] == 300 - counters["phones_offline"]
    assert {p["phase"] for p in progress} >= {"enrolling", "connecting", "driving", "done"}
    assert progress[-1]["phase"] == "done" and progress[-1]["failed"] == 0

    # every challenge created was decided, and as its plan said
    outcomes = report.outcomes
    created = counters["created"]
    assert created >= 150  # 250 due; on a busy machine some slots find no idle phone
    decided = outcomes["approved"] + outcomes["denied"] + outcomes["expired"]
    assert decided == created, outcomes
    assert outcomes["approved"] > 0 and outcomes["denied"] > 0 and outcomes["expired"] > 0
    assert set(outcomes) <= {"approved", "denied", "expired", "after_suspension.push_suspended"}, outcomes
    # each fraud report suspended its user, and a further create was refused
    assert outcomes["after_suspension.push_suspended"] >= 5
    assert report.checks["ok"] >= created

    # every kind of fault was injected, and the node did what the protocol says
    faults = report.faults
    for fault in [*PER_CHALLENGE, Fault.STORM]:
        assert faults.injected[fault] > 0, (fault, text)
        assert faults.passed[fault] > 0, (fault, text)
        assert faults.failed[fault] == 0
        assert faults.passed[fault] + faults.disturbed[fault] <= faults.injected[fault]
    assert faults.injected[Fault.STORM] == faults.passed[Fault.STORM] == 1
    assert faults.failures == [] and report.failures == []
    assert report.info["storm_reconnect_s"] < 10

    # latency histograms
    for name in ("create_to_delivered", "create_to_shown", "create_to_decided"):
        assert report.latencies[name].get_total_count() > 50, name
    # every online phone connected once, and again after the storm and its flaps
    assert report.latencies["connect"].get_total_count() >= 2 * counters["phones_connected"]
    assert report.info["drive_s"] == pytest.approx(2.5, abs=0.5)
    assert report.info["connections_per_worker"] > 300


async def test_a_wrong_outcome_fails_the_run(node, rpc):
    # The node requires biometrics; these users approve without: the node refuses
    # each approval, the challenge expires, and the report must say so.
    await rpc.call("policy.set", {"require_biometric": True})
    spec = spec_for(node, phones=10, rate=10, duration_s=0.5, mix="approve=100", biometric=0.0, ttl_s=1)
    report, _, progress = await run(spec)
    assert report.counters["created"] == 5
    assert report.outcomes == {"expired": 5}
    assert report.failed == 5
    assert report.checks["failed"] == 5
    assert len(report.failures) == 5
    assert all("expected approved, saw expired" in failure for failure in report.failures), report.failures
    text = report.render()
    assert "-> FAIL" in text
    assert "! ch_" in text and "expected approved, saw expired" in text
    assert progress[-1]["failed"] == 5


async def test_challenges_bound_the_run(node, rpc):
    spec = spec_for(node, phones=10, rate=50, duration_s=30, max_challenges=7, ttl_s=2)
    start = trio.current_time()
    report, _, _ = await run(spec)
    assert trio.current_time() - start < 10
    assert report.counters["created"] == 7
    assert report.outcomes == {"approved": 7}
    assert report.failed == 0 and report.checks["ok"] >= 7


async def test_rate_zero_connects_and_holds_without_a_challenge(node, rpc):
    spec = spec_for(node, phones=8, rate=0, hold_s=0.3)
    report, final, progress = await run(spec)
    assert report.counters["phones_connected"] == 8
    assert report.counters["created"] == 0 and not report.outcomes
    assert "holding" in {p["phase"] for p in progress}
    assert report.failed == 0
    assert len(final["fleet"]) == 8


async def test_a_run_closes_every_phone_socket_it_opened(node, rpc):
    # A socket that only the garbage collector closes is a leak (ResourceWarning: unclosed socket).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        report, _, _ = await run(spec_for(node, phones=20, rate=20, duration_s=0.3, ttl_s=2))
        gc.collect()
    assert report.counters["phones_connected"] == 20
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert unclosed == [], f"{len(unclosed)} sockets left open by the run, e.g. {unclosed[0]}"


async def test_offline_phones_do_not_hold_up_the_end_of_the_run(node, rpc):
    # A challenge to an offline phone expires after its ttl; nothing else is left to wait for.
    spec = spec_for(node, phones=10, rate=10, duration_s=0.5, offline=0.5, ttl_s=1, seed=3)
    start = trio.current_time()
    report, _, _ = await run(spec)
    elapsed = trio.current_time() - start
    assert report.failed == 0, report.render()
    assert report.counters["phones_offline"] > 0 and report.outcomes["expired"] > 0
    assert elapsed < 6, f"a run of 0.5 s with a ttl of 1 s took {elapsed:.1f} s"


async def test_a_storm_is_over_only_when_every_phone_is_back(node, rpc):
    # Whether a phone has noticed its lost socket by the time the storm looks for it
    # depends on the order trio wakes tasks in, which it shuffles: storm many times.
    storms, count = 50, 5
    entries = await enroll_fleet(rpc, ws_url(node), [f"storm-{i}" for i in range(count)])
    report = Report()
    async with trio.open_nursery() as nursery:
        phones = [LoadPhone(e.phone(ws_url(node), nursery), report, ack_timeout_s=5.0, seed=i)
                  for i, e in enumerate(entries)]
        for phone in phones:
            await nursery.start(phone.run)
        for storm in range(1, storms + 1):
            await _storm(0, phones, report)
            assert [p.reconnects for p in phones] == [storm] * count, \
                f"storm {storm} reported over after {report.info['storm_reconnect_s']} s with phones still away"
            assert all(p.connected.is_set() for p in phones)
        assert report.faults.injected[Fault.STORM] == report.faults.passed[Fault.STORM] == storms
        for phone in phones:
            phone.stop()
            await phone.phone.close()
        nursery.cancel_scope.cancel()


async def test_closed_loop_keeps_its_window_full_and_no_more(node, rpc, monkeypatch):
    from simulator import driver as driver_module

    most = 0
    original = driver_module.Driver._challenge

    async def counted(self, phone):
        nonlocal most
        most = max(most, self.open + 1)
        await original(self, phone)

    monkeypatch.setattr(driver_module.Driver, "_challenge", counted)
    report, _, _ = await run(spec_for(node, phones=40, in_flight=8, duration_s=1.5, rate=0.01, ttl_s=5))
    assert report.failed == 0
    assert report.counters["created"] > 8  # the window refilled as challenges ended
    assert most == 8  # and never held more than its size
    assert report.info["in_flight"] == 8
    assert "closed loop, 8 in flight" in report.render()
