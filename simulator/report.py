"""What a simulation measured: latency histograms, outcomes, faults; merged across workers.

Latencies go into HDR histograms (microseconds, 3 significant digits), which
merge exactly: K workers' histograms added together are the histogram of
the whole run. `to_dict`/`from_dict` carry a report between processes and
into `--json FILE`.
"""

from __future__ import annotations

import base64
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

from simulator.faults import FaultTally

LATENCIES = {
    "create_to_delivered": "create -> delivered (the phone has the frame)",
    "create_to_shown": "create -> shown (the phone has acked it on screen); challenges without faults",
    "create_to_decided": "create -> decided (the backend's wait returns), minus think time; without faults",
    "connect": "connect + hello (websocket handshake to welcome)",
}
PERCENTILES = (50, 90, 99, 99.9)
MAX_EXAMPLES = 20


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, 3_600_000_000, 3)  # 1 us .. 1 h


@dataclass
class Report:
    latencies: dict[str, HdrHistogram] = field(default_factory=lambda: {k: new_histogram() for k in LATENCIES})
    outcomes: Counter[str] = field(default_factory=Counter)  # what the backend saw, by kind
    checks: Counter[str] = field(default_factory=Counter)  # "ok", "failed"
    failures: list[str] = field(default_factory=list)  # expected X, saw Y (the first few)
    faults: FaultTally = field(default_factory=FaultTally)
    counters: Counter[str] = field(default_factory=Counter)  # created, late_starts, phones, ...
    info: dict[str, Any] = field(default_factory=dict)  # rates, durations, limits, node usage
    workers: int = 1

    def observe(self, name: str, seconds: float) -> None:
        self.latencies[name].record_value(max(1, int(seconds * 1_000_000)))

    def expect(self, ok: bool, what: str) -> None:
        """Record one check of an outcome against what the node must do."""
        if ok:
            self.checks["ok"] += 1
            return
        self.checks["failed"] += 1
        if len(self.failures) < MAX_EXAMPLES:
            self.failures.append(what)

    @property
    def failed(self) -> int:
        return self.checks["failed"] + sum(self.faults.failed.values())

    # -- between processes -----------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "latencies_us": {name: _summary(h) for name, h in self.latencies.items()},
            "histograms": {name: base64.b64encode(h.encode()).decode() for name, h in self.latencies.items()},
            "outcomes": dict(self.outcomes),
            "checks": dict(self.checks),
            "failures": list(self.failures),
            "faults": self.faults.to_dict(),
            "counters": dict(self.counters),
            "info": dict(self.info),
            "workers": self.workers,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        report = cls()
        report.merge(data)
        report.workers = data.get("workers", 1)
        report.info = dict(data.get("info", {}))
        return report

    def merge(self, data: dict[str, Any]) -> None:
        """Add another worker's report (as `to_dict` gave it) into this one."""
        for name, encoded in data["histograms"].items():
            self.latencies[name].add(HdrHistogram.decode(base64.b64decode(encoded)))
        self.outcomes.update(data["outcomes"])
        self.checks.update(data["checks"])
        room = MAX_EXAMPLES - len(self.failures)
        self.failures.extend(data["failures"][:max(room, 0)])
        self.faults.merge(data["faults"])
        self.counters.update(data["counters"])

    # -- for people --------------------------------------------------------------
    def render(self) -> str:
        info, counters = self.info, self.counters
        lines = ["", "pushguard simulate: report"]
        duration = info.get("drive_s") or 0
        created = counters.get("created", 0)
        decided = sum(v for k, v in self.outcomes.items() if k in ("approved", "denied", "expired", "cancelled"))
        lines.append(f"  workers {self.workers}; phones {counters.get('phones_connected', 0)} connected of "
                     f"{counters.get('phones', 0)} ({counters.get('phones_offline', 0)} kept offline)")
        if info.get("in_flight"):
            lines.append(f"  closed loop, {info['in_flight']} in flight, for {duration:.1f} s; created {created} "
                         f"({created / duration if duration else 0:.0f}/s), decided {decided} "
                         f"({decided / duration if duration else 0:.0f}/s)")
        elif "target_rate" in info:
            lines.append(f"  target {info['target_rate']:g}/s for {duration:.1f} s; created {created} "
                         f"({created / duration if duration else 0:.0f}/s), decided {decided} "
                         f"({decided / duration if duration else 0:.0f}/s)")
        if counters.get("late_starts"):
            lines.append(f"  late starts (the open loop fell behind its schedule): {counters['late_starts']}")
        if counters.get("no_idle_phone"):
            lines.append(f"  slots with no idle phone to challenge: {counters['no_idle_phone']}")
        if any(h.get_total_count() for h in self.latencies.values()):
            lines.append("  latency (ms)            " + "".join(f"{'p%g' % p:>9}" for p in PERCENTILES)
                         + "      max    count")
        for name, histogram in self.latencies.items():
            count = histogram.get_total_count()
            if not count:
                continue
            cells = "".join(f"{histogram.get_value_at_percentile(p) / 1000:9.2f}" for p in PERCENTILES)
            lines.append(f"    {name:<22}{cells}{histogram.get_max_value() / 1000:9.2f}{count:9d}")
        if self.outcomes:
            lines.append("  outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())))
        tally = self.faults
        if tally.injected:
            lines.append("  faults      injected  as expected  wrong  cut short by a lost socket")
            for fault, count in sorted(tally.injected.items()):
                lines.append(f"    {fault:<10} {count:8d} {tally.passed.get(fault, 0):12d} {tally.failed.get(fault, 0):6d}"
                             f" {tally.disturbed.get(fault, 0):6d}")
        for key in ("storm_reconnect_s", "connect_s", "fd_soft_limit", "connections_per_worker"):
            if key in info:
                lines.append(f"  {key.replace('_', ' ')}: {info[key]}")
        if "node" in info:
            node = info["node"]
            lines.append(f"  node pid {node['pid']}: RSS {node['rss_start_mib']:.1f} -> {node['rss_end_mib']:.1f} MiB, "
                         f"CPU {node['cpu_percent']:.0f}% of one core once the phones were connected")
        if "node_load" in info and created:
            load = info["node_load"]
            lines.append(f"  under load: node CPU {load['cpu_percent']:.0f}% of one core, "
                         f"{load['cpu_s'] * 1e6 / created:.0f} us a challenge")
        if info.get("sim_cpu_s") and created:
            lines.append(f"  simulator CPU under load: {info['sim_cpu_s'] * 1e6 / created:.0f} us a challenge")
        for name, value in sorted(info.items()):
            if name.startswith("bombing."):
                lines.append(f"  {name.removeprefix('bombing.').replace('_', ' ')}: {value}")
        verdict = "PASS" if self.failed == 0 else "FAIL"
        lines.append(f"  checks: {self.checks.get('ok', 0)} as expected, {self.failed} wrong -> {verdict}")
        for failure in self.failures + tally.failures:
            lines.append(f"    ! {failure}")
        return "\n".join(lines)


def _summary(histogram: HdrHistogram) -> dict[str, float | int]:
    count = histogram.get_total_count()
    result: dict[str, float | int] = {"count": count}
    if count:
        for p in PERCENTILES:
            result[f"p{p:g}"] = histogram.get_value_at_percentile(p)
        result["max"] = histogram.get_max_value()
        result["mean"] = round(histogram.get_mean_value(), 1)
    return result
