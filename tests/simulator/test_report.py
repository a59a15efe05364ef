"""The report: HDR histograms that merge exactly, checks, JSON between processes, the rendered text."""

from __future__ import annotations

import json
import random

import pytest

from simulator.faults import Fault
from simulator.report import LATENCIES, MAX_EXAMPLES, PERCENTILES, Report


def fill(report: Report, rng: random.Random, n: int) -> list[tuple[str, float]]:
    samples = []
    for _ in range(n):
        name = rng.choice(list(LATENCIES))
        seconds = rng.lognormvariate(-5, 1.2)  # a few ms, with a long tail
        report.observe(name, seconds)
        samples.append((name, seconds))
    return samples


def summary(report: Report) -> dict:
    return {name: (h.get_total_count(), h.get_max_value(), round(h.get_mean_value(), 1),
                   [h.get_value_at_percentile(p) for p in (*PERCENTILES, 25, 75)])
            for name, h in report.latencies.items()}


def test_merging_reports_equals_recording_everything_into_one():
    rng = random.Random(1)
    a, b, c, whole = Report(), Report(), Report(), Report()
    for part, n in ((a, 3000), (b, 1000), (c, 1)):
        for name, seconds in fill(part, rng, n):
            whole.observe(name, seconds)
    for part, outcomes, checks in ((a, {"approved": 5, "denied": 2}, (7, 1)), (b, {"approved": 1, "expired": 4}, (5, 0)),
                                   (c, {}, (0, 2))):
        part.outcomes.update(outcomes)
        whole.outcomes.update(outcomes)
        for ok in [True] * checks[0] + [False] * checks[1]:
            part.expect(ok, "wrong")
            whole.expect(ok, "wrong")
        part.counters.update(created=sum(outcomes.values()))
        whole.counters.update(created=sum(outcomes.values()))
    merged = Report()
    for part in (a, b, c):
        merged.merge(part.to_dict())
    assert summary(merged) == summary(whole)
    assert sum(h.get_total_count() for h in merged.latencies.values()) == 4001
    assert merged.outcomes == whole.outcomes == {"approved": 6, "denied": 2, "expired": 4}
    assert merged.checks == whole.checks == {"ok": 12, "failed": 3}
    assert merged.counters == {"created": 12}
    assert merged.failed == 3
    assert merged.to_dict()["latencies_us"] == whole.to_dict()["latencies_us"]


def test_percentiles_are_right_to_three_significant_digits():
    report = Report()
    for ms in range(1, 1001):  # 1 ms .. 1000 ms, one each
        report.observe("create_to_delivered", ms / 1000)
    h = report.latencies["create_to_delivered"]
    assert h.get_total_count() == 1000
    assert h.get_value_at_percentile(50) == pytest.approx(500_000, rel=1e-3)
    assert h.get_value_at_percentile(99) == pytest.approx(990_000, rel=1e-3)
    assert h.get_max_value() == pytest.approx(1_000_000, rel=1e-3)
    data = report.to_dict()["latencies_us"]["create_to_delivered"]
    assert data["count"] == 1000
    assert data["p50"] == pytest.approx(500_000, rel=1e-3)
    assert data["mean"] == pytest.approx(500_500, rel=1e-3)
    assert report.to_dict()["latencies_us"]["connect"] == {"count": 0}


def test_a_latency_under_a_microsecond_is_recorded_as_one():
    report = Report()
    report.observe("connect", 0)
    report.observe("connect", -0.5)  # clocks: never lose a sample
    assert report.latencies["connect"].get_total_count() == 2
    assert report.latencies["connect"].get_max_value() == 1


def test_round_trip_through_json():
    report = Report(workers=3)
    fill(report, random.Random(2), 500)
    report.outcomes.update(approved=3, push_limited=1)
    report.expect(True, "")
    report.expect(False, "expected approved, saw expired")
    report.faults.inject(Fault.REPLAY)
    report.faults.check(Fault.REPLAY, False, "copy accepted")
    report.counters.update(created=4, phones=10)
    report.info.update(drive_s=2.5, target_rate=100.0)
    text = json.dumps(report.to_dict())
    again = Report.from_dict(json.loads(text))
    assert summary(again) == summary(report)
    assert again.to_dict() == json.loads(text)
    assert again.workers == 3
    assert again.info == {"drive_s": 2.5, "target_rate": 100.0}
    assert again.failed == 2
    assert again.failures == ["expected approved, saw expired"]
    assert again.faults.failures == ["replay: copy accepted"]


def test_expect_counts_every_check_and_keeps_the_first_examples():
    report = Report()
    for i in range(MAX_EXAMPLES + 10):
        report.expect(True, "never kept")
        report.expect(False, f"failure {i}")
    assert report.checks == {"ok": MAX_EXAMPLES + 10, "failed": MAX_EXAMPLES + 10}
    assert report.failed == MAX_EXAMPLES + 10
    assert report.failures == [f"failure {i}" for i in range(MAX_EXAMPLES)]
    other = Report()
    other.expect(False, "from another worker")
    report.merge(other.to_dict())
    assert report.checks["failed"] == MAX_EXAMPLES + 11
    assert len(report.failures) == MAX_EXAMPLES


def test_failed_counts_fault_failures_too():
    report = Report()
    report.expect(True, "")
    assert report.failed == 0
    report.faults.check(Fault.FLAP, False, "not re-sent")
    report.faults.check(Fault.SKEW, True, "")
    assert report.failed == 1


def passing_report() -> Report:
    report = Report()
    fill(report, random.Random(3), 200)
    report.outcomes.update(approved=8, denied=2)
    report.counters.update(created=10, phones=5, phones_connected=4, phones_offline=1)
    report.info.update(target_rate=5.0, drive_s=2.0, fd_soft_limit=20000)
    report.faults.inject(Fault.FLAP)
    report.faults.check(Fault.FLAP, True, "")
    for _ in range(10):
        report.expect(True, "")
    return report


def test_render_shows_pass_latencies_outcomes_and_faults():
    text = passing_report().render()
    assert "checks: 10 as expected, 0 wrong -> PASS" in text
    assert "FAIL" not in text and "!" not in text
    assert "phones 4 connected of 5 (1 kept offline)" in text
    assert "created 10 (5/s), decided 10 (5/s)" in text
    assert "approved 8, denied 2" in text
    for name in LATENCIES:
        assert name in text
    assert "p99.9" in text
    assert any(line.split()[:4] == ["flap", "1", "1", "0"] for line in text.splitlines())
    assert "fd soft limit: 20000" in text


def test_render_shows_fail_and_each_failure():
    report = passing_report()
    report.expect(False, "ch_1 (approve): expected approved, saw expired")
    report.faults.check(Fault.FLAP, False, "challenge ch_2 was not re-sent")
    text = report.render()
    assert "checks: 10 as expected, 2 wrong -> FAIL" in text
    assert "PASS" not in text
    assert "    ! ch_1 (approve): expected approved, saw expired" in text
    assert "    ! flap: challenge ch_2 was not re-sent" in text


def test_render_leaves_out_empty_histograms():
    report = Report()
    report.observe("connect", 0.01)
    lines = report.render().splitlines()
    assert any(line.strip().startswith("connect") for line in lines)
    assert not any(line.strip().startswith("create_to") for line in lines)
    assert "PASS" in lines[-1]
    assert "latency" not in Report().render()


def test_render_gives_cpu_a_challenge_under_load():
    report = passing_report()  # 10 challenges created
    report.info.update(node_load={"pid": 1, "rss_start_mib": 1.0, "rss_end_mib": 1.0, "cpu_s": 0.02,
                                  "cpu_percent": 1.0}, sim_cpu_s=0.015)
    text = report.render()
    assert "under load: node CPU 1% of one core, 2000 us a challenge" in text
    assert "simulator CPU under load: 1500 us a challenge" in text
