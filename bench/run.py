"""`make bench`: the fixed benchmark suite every performance claim rests on.

Each figure is measured beside its reference in the same run, because
absolute numbers drift on a shared machine; the report gives both and their
ratio. The suites:

1. idle memory: node RSS per connected, authenticated phone at 10,000 phones
   and at the most one node holds, against a bare trio-websocket server
   holding as many connections;
2. connect storm: time for 10,000 phones to connect and authenticate,
   against the bare server's connect time;
3. challenge throughput at saturation with 10,000 phones connected
   (create -> delivered -> approved -> the backend's wait returns) with 200
   challenges kept open, against the bare server's push round trips with
   200 pushes kept in flight;
4. latency percentiles at fixed rates (250/s and 1,000/s);
5. TOTP verifications per second, against the node's cheapest RPC;
6. the SQLite store's challenge rate beside a busy event loop, against the
   same beside an idle one (bench/store_load.py).

It runs a node (`pushguard serve`) and the simulator (`pushguard simulate`)
as separate processes on loopback, keeps the enrolled fleet and the node's
data directory in bench/.cache between runs (enrolling 19,000 phones takes a
minute), and writes bench/results/<date>.json and <date>.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio

from engine.rpc_client import RpcClient
from simulator.localnode import LocalNode
from simulator.resources import sample_process

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / ".cache"
RESULTS = ROOT / "results"
POLICY = ["--policy", "max_per_user_per_hour=100000"]
# Load starts this long after the last phone connected: more than one round of
# the node's garbage-collector steward (gc_freeze_s, 10 s), so what is measured
# is the steady state and not the tail of the connect storm.
SETTLE_S = 12


def log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# -- processes -------------------------------------------------------------------


class Node(LocalNode):
    """The node under measurement, over the bench's persistent data directory."""

    def rss(self) -> int:
        sample = sample_process(self.pid)
        assert sample is not None, "the node is gone"
        return sample.rss_bytes

    def call(self, method: str, *params: Any) -> Any:
        async def run() -> Any:
            async with RpcClient.connect("127.0.0.1", self.rpc_port, api_key=self.api_key) as rpc:
                return await rpc.call(method, *params)

        return trio.run(run)

    def wait_connected(self, count: int, timeout_s: float) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if self.call("stats.get")["connected_devices"] >= count:
                return time.monotonic() - start
            time.sleep(0.5)
        raise SystemExit(f"bench: {count} phones did not connect within {timeout_s} s")


@contextmanager
def node(data_dir: Path):
    running = Node(data_dir)
    try:
        yield running
    finally:
        running.stop()


def simulate(target: Node, *args: str, wait: bool = True) -> subprocess.Popen | dict[str, Any]:
    """Run `pushguard simulate` against the node; its JSON report when waited for."""
    out = Path(tempfile.mkstemp(prefix="bench-sim-", suffix=".json")[1])
    command = [sys.executable, "-m", "pushguard", "simulate", "--rpc", target.rpc, "--ws", target.ws,
               "--api-key", target.api_key, "--fleet", str(CACHE / "fleet.json"), "--json", str(out),
               "--node-pid", str(target.pid), "--quiet", *POLICY, *args]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    process.report_path = out  # type: ignore[attr-defined]
    if not wait:
        return process
    return finish(process)


def finish(process: subprocess.Popen) -> dict[str, Any]:
    code = process.wait()
    path: Path = process.report_path  # type: ignore[attr-defined]
    report = json.loads(path.read_text()) if path.exists() and path.stat().st_size else {}
    path.unlink(missing_ok=True)
    if code not in (0, 1) or not report:
        raise SystemExit(f"bench: pushguard simulate failed (exit {code})")
    report["exit_code"] = code
    return report


class Bare:
    """The bare trio-websocket server (bench/bare.py) and its clients."""

    def __init__(self, *server_args: str):
        self.server = subprocess.Popen([sys.executable, "-m", "bench.bare", "server", *server_args],
                                       stdout=subprocess.PIPE, text=True)
        self.port = self._read(self.server)["port"]
        self.clients: subprocess.Popen | None = None

    @staticmethod
    def _read(process: subprocess.Popen) -> dict[str, Any]:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise SystemExit("bench: the bare reference process ended early")
        return json.loads(line)

    def connect(self, count: int) -> dict[str, Any]:
        self.clients = subprocess.Popen([sys.executable, "-m", "bench.bare", "clients", "--port", str(self.port),
                                         "--count", str(count)], stdout=subprocess.PIPE, text=True)
        return self._read(self.clients)

    def read_server(self) -> dict[str, Any]:
        return self._read(self.server)

    def rss(self) -> int:
        sample = sample_process(self.server.pid)
        assert sample is not None
        return sample.rss_bytes

    def stop(self) -> None:
        for process in (self.clients, self.server):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()


# -- the suites ---------------------------------------------------------------------


def ensure_fleet(phones: int, workers: int) -> None:
    fleet = CACHE / "fleet.json"
    if fleet.exists():
        enrolled = len(json.loads(fleet.read_text())["phones"])
        if enrolled >= phones:
            return
        log(f"the cached fleet has {enrolled} phones, {phones} are needed: enrolling afresh")
        fleet.unlink()
        for leftover in (CACHE / "node").glob("*"):
            leftover.unlink()
    log(f"enrolling {phones} phones through the real flow (once; cached in {CACHE})")
    with node(CACHE / "node") as target:
        report = simulate(target, "--phones", str(phones), "--workers", str(workers), "--rate", "0")
        assert isinstance(report, dict)
    log(f"enrolled {report['counters'].get('phones', 0)} phones")


def idle_memory_and_connect(counts: list[int], workers: int, settle_s: float) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for count in counts:
        log(f"memory: {count} phones on a fresh node")
        with node(CACHE / "node") as target:
            time.sleep(settle_s)
            target.call("stats.get")
            base = target.rss()
            process = simulate(target, "--phones", str(count), "--workers", str(workers), "--rate", "0",
                               "--hold", str(max(20, count / 500)), wait=False)
            target.wait_connected(count, timeout_s=600)
            time.sleep(settle_s)
            loaded = target.rss()
            report = finish(process)  # type: ignore[arg-type]
        log(f"bare: {count} connections")
        bare = Bare()
        try:
            time.sleep(settle_s)
            bare_base = bare.rss()
            opened = bare.connect(count)
            time.sleep(settle_s)
            bare_loaded = bare.rss()
        finally:
            bare.stop()
        node_kib = (loaded - base) / count / 1024
        bare_kib = (bare_loaded - bare_base) / opened["opened"] / 1024
        results[str(count)] = {
            "phones": count,
            "node_base_mib": round(base / 2**20, 1),
            "node_rss_mib": round(loaded / 2**20, 1),
            "node_kib_per_phone": round(node_kib, 2),
            "bare_kib_per_connection": round(bare_kib, 2),
            "ratio_node_to_bare": round(node_kib / bare_kib, 2),
            "connect_s": report["info"].get("connect_s"),
            "bare_connect_s": opened["seconds"],
            "connect_ratio_node_to_bare": round(report["info"].get("connect_s", 0) / opened["seconds"], 2),
            "phones_connected": report["counters"].get("phones_connected"),
        }
        log(f"  node {node_kib:.1f} KiB/phone, bare {bare_kib:.1f} KiB/connection; connect "
            f"{report['info'].get('connect_s')} s vs bare {opened['seconds']} s")
    return results


def throughput(phones: int, workers: int, in_flight: int, seconds: float) -> dict[str, Any]:
    log(f"throughput: {phones} phones, {in_flight} challenges in flight for {seconds:g} s")
    with node(CACHE / "node") as target:
        report = simulate(target, "--phones", str(phones), "--workers", str(workers), "--in-flight", str(in_flight),
                          "--duration", str(seconds), "--ttl", "30", "--hold", str(SETTLE_S))
        assert isinstance(report, dict)
    # Only answers count: an expired challenge is a failure, not throughput.
    decided = sum(report["outcomes"].get(k, 0) for k in ("approved", "denied"))
    drive_s = report["info"].get("drive_s") or seconds
    log(f"bare: push round trips to {phones} connections for {seconds:g} s")
    bare = Bare("--push-seconds", str(seconds), "--expect", str(phones), "--window", str(in_flight))
    try:
        bare.connect(phones)
        bare.read_server()  # {"connected": n}
        pushed = bare.read_server()
    finally:
        bare.stop()
    node_rate = decided / drive_s
    return {
        "phones": phones, "in_flight": in_flight, "decided": decided, "decided_per_s": round(node_rate, 1),
        "wrong_outcomes": report["checks"].get("failed", 0),
        **_cpu_under_load(report),
        "latency_us": report["latencies_us"],
        "bare_round_trips_per_s": pushed["rate"], "bare_server_cpu_us": pushed["server_cpu_us"],
        "ratio_node_to_bare": round(node_rate / pushed["rate"], 3),
    }


def latency(phones: int, workers: int, rates: list[float], seconds: float) -> dict[str, Any]:
    results = {}
    with node(CACHE / "node") as target:
        for rate in rates:
            log(f"latency at {rate:g}/s with {phones} phones")
            report = simulate(target, "--phones", str(phones), "--workers", str(workers), "--rate", str(rate),
                              "--duration", str(seconds), "--ttl", "30", "--hold", str(SETTLE_S))
            assert isinstance(report, dict)
            lat = report["latencies_us"]
            results[f"{rate:g}"] = {
                "rate": rate, "created": report["counters"].get("created", 0),
                "late_starts": report["counters"].get("late_starts", 0),
                "wrong_outcomes": report["checks"].get("failed", 0),
                **_cpu_under_load(report),
                "create_to_delivered_ms": {k: round(v / 1000, 2) for k, v in lat["create_to_delivered"].items()
                                           if k != "count"},
                "create_to_decided_ms": {k: round(v / 1000, 2) for k, v in lat["create_to_decided"].items()
                                         if k != "count"},
            }
    return results


def _cpu_under_load(report: dict[str, Any]) -> dict[str, Any]:
    """The node's and the simulator's CPU while the load ran (not while the phones idled)."""
    created = report["counters"].get("created", 0) or 1
    load = report["info"].get("node_load", {})
    return {"node_cpu_percent": round(load.get("cpu_percent", 0), 1),
            "node_cpu_us_per_challenge": round(load.get("cpu_s", 0) * 1e6 / created),
            "sim_cpu_us_per_challenge": round(report["info"].get("sim_cpu_s", 0) * 1e6 / created)}


def store(seconds: float) -> dict[str, Any]:
    from bench.store_load import run as run_store_load

    log(f"store: challenges/s beside an idle and a busy event loop, {seconds:g} s each")
    return trio.run(lambda: run_store_load(seconds=seconds, tasks=200, busy_slice_ms=1.0))


def totp(users: int, seconds: float, concurrency: int) -> dict[str, Any]:
    from bench.totp_load import run_totp_load

    log(f"TOTP: {users} users, {seconds:g} s of verifications")
    with tempfile.TemporaryDirectory(prefix="bench-totp-") as tmp, node(Path(tmp)) as target:
        return trio.run(run_totp_load, target.rpc_port, target.api_key, users, seconds, concurrency)


# -- the report -----------------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# pushguard benchmark, {results['date']}", "",
             f"Machine: {results['machine']}. Every figure beside its reference from the same run.", "",
             "| figure | pushguard | reference | ratio | target |", "|---|---|---|---|---|"]
    for count, m in results.get("idle_memory", {}).items():
        lines.append(f"| RSS per idle phone, {count} phones | {m['node_kib_per_phone']} KiB | "
                     f"{m['bare_kib_per_connection']} KiB (bare trio-websocket) | {m['ratio_node_to_bare']} | "
                     f"<= 25 KiB |")
    for count, m in results.get("idle_memory", {}).items():
        lines.append(f"| connect + authenticate {count} phones | {m['connect_s']} s | {m['bare_connect_s']} s "
                     f"(bare connect) | {m['connect_ratio_node_to_bare']} | {'<= 10 s' if count == '10000' else '-'} |")
    if "throughput" in results:
        t = results["throughput"]
        lines.append(f"| challenges/s at saturation, {t['phones']} phones | {t['decided_per_s']} "
                     f"(node CPU {t['node_cpu_percent']}%: {t['node_cpu_us_per_challenge']} us a challenge, "
                     f"simulator {t['sim_cpu_us_per_challenge']} us; {t['in_flight']} in flight) | "
                     f"{t['bare_round_trips_per_s']} bare push round trips/s"
                     f" | {t['ratio_node_to_bare']} | >= 2000/s and >= 0.5 |")
    for rate, l in results.get("latency", {}).items():
        lines.append(f"| p99 create->delivered at {rate}/s | {l['create_to_delivered_ms'].get('p99')} ms | - | - | "
                     f"{'<= 20 ms' if rate == '1000' else '-'} |")
        lines.append(f"| p99 create->decided at {rate}/s | {l['create_to_decided_ms'].get('p99')} ms | - | - | "
                     f"{'<= 50 ms' if rate == '1000' else '-'} |")
    if "store" in results:
        t = results["store"]
        lines.append(f"| store challenges/s beside a busy loop | {t['challenges_per_s_busy_loop']} | "
                     f"{t['challenges_per_s_idle_loop']} beside an idle loop | {t['ratio']} | - |")
        lag = t["loop_lag_ms_at_paced_rate"]
        lines.append(f"| loop lag while the store takes {t['paced_rate']} challenges/s (p99 / max) | "
                     f"{lag['p99']} / {lag['max']} ms | - | - | - |")
    if "totp" in results:
        t = results["totp"]
        lines.append(f"| TOTP verifications/s (wrong codes) | {t['wrong_per_s']} | {t['policy_get_per_s']} "
                     f"policy.get/s | {t['ratio_wrong_to_rpc']} | - |")
        lines.append(f"| TOTP verifications/s (valid codes) | {t['valid_per_s']} | - | - | - |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--phones", type=int, default=10_000, help="the fleet of suites 2-4 (default 10,000)")
    parser.add_argument("--max-phones", type=int, default=19_000, help="the most one node holds (default 19,000)")
    parser.add_argument("--workers", type=int, default=2, help="simulator processes (default 2)")
    parser.add_argument("--in-flight", type=int, default=200,
                        help="challenges kept open to saturate the node, and pushes the bare server keeps in flight "
                             "(default 200)")
    parser.add_argument("--seconds", type=float, default=10, help="length of each load (default 10 s)")
    parser.add_argument("--only", nargs="*", choices=["memory", "throughput", "latency", "store", "totp"],
                        help="run only these suites")
    parser.add_argument("--quick", action="store_true", help="small figures for a smoke run (not comparable)")
    args = parser.parse_args(argv)
    if args.quick:
        args.phones, args.max_phones, args.seconds = 500, 1000, 3
    suites = set(args.only or ["memory", "throughput", "latency", "store", "totp"])
    CACHE.mkdir(exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    results: dict[str, Any] = {"date": datetime.date.today().isoformat(), "machine": _machine(),
                               "args": vars(args)}
    if suites & {"memory", "throughput", "latency"}:
        ensure_fleet(max(args.phones, args.max_phones if "memory" in suites else 0), args.workers)
    if "memory" in suites:
        results["idle_memory"] = idle_memory_and_connect([args.phones, args.max_phones], args.workers, settle_s=3)
    if "throughput" in suites:
        results["throughput"] = throughput(args.phones, args.workers, args.in_flight, args.seconds)
    if "latency" in suites:
        results["latency"] = latency(args.phones, args.workers, [250, 1000], args.seconds)
    if "store" in suites:
        results["store"] = store(seconds=args.seconds / 2)
    if "totp" in suites:
        results["totp"] = totp(users=2000 if not args.quick else 200, seconds=args.seconds, concurrency=64)
    stem = RESULTS / (results["date"] + ("-quick" if args.quick else ""))
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    log(f"wrote {stem}.json and {stem}.md")
    return 0


def _machine() -> str:
    cpus = os.cpu_count()
    soft, hard = __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)
    return f"{cpus} CPUs, Python {sys.version.split()[0]}, open files {soft}/{hard}"


if __name__ == "__main__":
    sys.exit(main())
