"""`pushguard simulate`: drive a node with simulated phones and report what it did.

Runs the load (or the push-bombing scenario) in one process or in K worker
processes, shows a live progress line, merges the workers' reports and
prints one report; `--json FILE` writes it as data. Exits 0 when every
checked outcome was as the protocol says, 1 otherwise, 2 on bad arguments.
Every load loop is bounded: by --duration and --challenges, and the phones
and nodes it talks to are on 127.0.0.0/8 only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from collections.abc import Awaitable, Callable
from typing import Any, TextIO
from urllib.parse import urlparse

import platformdirs
import trio

from engine.rpc_client import RemoteError, RpcClient
from simulator.bombing import run_bombing
from simulator.faults import FaultPlan
from simulator.fleet import entry_from_json, save_fleet
from simulator.localnode import LocalNode
from simulator.mix import Mix
from simulator.report import Report
from simulator.resources import check_loopback, sample_process, usage_between
from simulator.worker import LoadSpec, run_worker

MAX_DURATION_S = 3600
MAX_CHALLENGES = 10_000_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_argument_group("the node")
    target.add_argument("--rpc", default="127.0.0.1:7464", metavar="HOST:PORT", help="its msgpack-RPC listener")
    target.add_argument("--ws", default="ws://127.0.0.1:8765/v1/device", metavar="URL", help="its device websocket")
    target.add_argument("--api-key", help="an operator key (default: the dev-api-key of --node-data-dir)")
    target.add_argument("--node-data-dir", type=Path, default=Path(platformdirs.user_data_dir("pushguard")),
                        metavar="DIR", help="the node's data directory, for its dev-api-key")
    target.add_argument("--spawn-node", action="store_true",
                        help="start a node (pushguard serve) on ephemeral loopback ports for this run")
    target.add_argument("--node-pid", type=int, help="a local node's pid, to report its RSS and CPU")
    target.add_argument("--policy", action="append", default=[], metavar="KEY=VALUE",
                        help="set a policy value before the run (operator key), e.g. max_per_user_per_hour=100000")
    load = parser.add_argument_group("the load")
    load.add_argument("--scenario", choices=["load", "bombing"], default="load")
    load.add_argument("--phones", type=int, default=100, help="phones to enroll or reuse (default 100)")
    load.add_argument("--fleet", type=Path, metavar="FILE", help="reuse this fleet file; created if missing")
    load.add_argument("--rate", type=float, default=50.0,
                      help="challenges per second, open loop (default 50; 0: connect and hold only)")
    load.add_argument("--in-flight", type=int, default=0, metavar="N",
                      help="closed loop instead of --rate: keep N challenges open (saturation throughput)")
    load.add_argument("--hold", type=float, default=0.0, metavar="S",
                      help="keep the phones connected and idle S seconds before the load (default 0)")
    load.add_argument("--duration", type=float, default=10.0, help="seconds of load (default 10)")
    load.add_argument("--challenges", type=int, help="stop after this many challenges")
    load.add_argument("--mix", default="approve=100", help="e.g. approve=70,deny=10,ignore=10,fraud=10")
    load.add_argument("--think", default="fixed:0",
                      help="think time: fixed:S, uniform:LO:HI, exp:MEAN, lognormal:MEDIAN:SIGMA (seconds)")
    load.add_argument("--biometric", type=float, default=1.0, help="share of answers with biometrics (default 1)")
    load.add_argument("--offline", type=float, default=0.0, help="share of phones kept offline (default 0)")
    load.add_argument("--encoding", choices=["msgpack", "json", "mixed"], default="msgpack")
    load.add_argument("--faults", default="", metavar="SPEC",
                      help="per-challenge fault probabilities: flap, ack-delay, ack-loss, skew, replay, garbage, "
                           "oversize; e.g. flap=0.02,replay=0.01")
    load.add_argument("--storm-at", type=float, metavar="S", help="every phone drops and returns S seconds in")
    load.add_argument("--ttl", type=int, default=10, help="challenge lifetime in seconds (default 10)")
    load.add_argument("--match", choices=["none", "choose", "type"], help="number matching for every challenge")
    load.add_argument("--seed", type=int, default=1)
    bombing = parser.add_argument_group("the bombing scenario")
    bombing.add_argument("--attempts", type=int, default=100, help="pushes the attacker asks for (default 100)")
    bombing.add_argument("--attack-rate", type=float, default=20.0, help="per second (default 20)")
    bombing.add_argument("--victim", choices=["deny", "ignore", "fraud"], default="deny",
                         help="what the victim does with each push (default deny)")
    scale = parser.add_argument_group("scale and output")
    scale.add_argument("--workers", type=int, default=1, help="simulator processes (default 1)")
    scale.add_argument("--rpc-connections", type=int, default=8, help="RPC connections per worker (default 8)")
    scale.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON")
    scale.add_argument("--quiet", action="store_true", help="no progress line")


def main(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    try:
        _validate(args)
    except ValueError as exc:
        print(f"pushguard simulate: {exc}", file=sys.stderr)
        return 2
    node = SpawnedNode() if args.spawn_node else None
    try:
        if node is not None:
            args.rpc, args.ws, args.node_data_dir, args.node_pid = node.rpc, node.ws, node.data_dir, node.pid
        api_key = args.api_key or _dev_key(args.node_data_dir)
        host, port = _host_port(args.rpc)
        spec = LoadSpec(rpc_host=host, rpc_port=port, api_key=api_key, ws_url=args.ws, phones=args.phones,
                        fleet=str(args.fleet) if args.fleet else None, rate=args.rate, duration_s=args.duration,
                        max_challenges=args.challenges, mix=args.mix, think=args.think, biometric=args.biometric,
                        offline=args.offline, encoding=args.encoding, faults=args.faults, storm_at_s=args.storm_at,
                        ttl_s=args.ttl, match=args.match, workers=args.workers, seed=args.seed,
                        rpc_connections=args.rpc_connections, hold_s=args.hold, in_flight=args.in_flight)
        try:
            report = trio.run(_run, args, spec)
        except OSError as exc:
            print(f"pushguard simulate: cannot reach the node at {args.rpc}: {exc}", file=sys.stderr)
            return 1
        except RemoteError as exc:
            print(f"pushguard simulate: --policy: {exc}", file=sys.stderr)
            return 2
    finally:
        if node is not None:
            node.stop()
    print(report.render(), file=out)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_dict(), indent=2, default=str))
    return 0 if report.failed == 0 else 1


def _validate(args: argparse.Namespace) -> None:
    Mix.parse(args.mix, args.think, args.biometric)
    FaultPlan.parse(args.faults, args.storm_at)
    check_loopback(_host_port(args.rpc)[0])
    ws = urlparse(args.ws)
    if ws.scheme not in ("ws", "wss") or not ws.hostname:
        raise ValueError(f"--ws must be a ws:// or wss:// URL, not {args.ws!r}")
    check_loopback(ws.hostname)
    try:
        ws.port
    except ValueError:
        raise ValueError(f"--ws port out of range in {args.ws!r}") from None
    for name, value, low, high in (("--phones", args.phones, 1, 1_000_000), ("--workers", args.workers, 1, 64),
                                   ("--duration", args.duration, 0.1, MAX_DURATION_S), ("--rate", args.rate, 0, 1e6),
                                   ("--hold", args.hold, 0, MAX_DURATION_S),
                                   ("--in-flight", args.in_flight, 0, 100_000),
                                   ("--ttl", args.ttl, 1, 600), ("--offline", args.offline, 0, 1),
                                   ("--attempts", args.attempts, 1, 100_000),
                                   ("--attack-rate", args.attack_rate, 0.01, 10_000)):
        if not low <= value <= high:
            raise ValueError(f"{name} must be from {low:g} to {high:g}")
    if args.challenges is not None and not 1 <= args.challenges <= MAX_CHALLENGES:
        raise ValueError(f"--challenges must be from 1 to {MAX_CHALLENGES}")
    if args.spawn_node and args.fleet and args.fleet.exists():
        raise ValueError("--spawn-node starts a node that knows no phones: it cannot reuse the fleet in "
                         f"{args.fleet}; give a new --fleet path or run against the node that enrolled it")
    if args.workers > args.phones:
        raise ValueError("--workers cannot exceed --phones")
    for item in args.policy:
        if "=" not in item:
            raise ValueError(f"--policy takes KEY=VALUE, not {item!r}")


async def _run(args: argparse.Namespace, spec: LoadSpec) -> Report:
    async with RpcClient.connect(spec.rpc_host, spec.rpc_port, api_key=spec.api_key) as rpc:
        if args.policy:
            await rpc.call("policy.set", {k: _number(v) for k, _, v in (p.partition("=") for p in args.policy)})
        start: list = []
        load_start: list = []
        load_end: list = []

        async with trio.open_nursery() as sampler:

            async def sample_at_load_start() -> None:
                await trio.sleep(args.hold)
                load_start.append(sample_process(args.node_pid))
                await trio.sleep(args.duration)
                load_end.append(sample_process(args.node_pid))

            async def go() -> None:
                """Every phone is connected: the node's usage is measured from here,
                and its CPU under load from the end of --hold, when the load starts,
                for --duration (not while the phones go away at the end)."""
                if args.node_pid:
                    start.append(sample_process(args.node_pid))
                    sampler.start_soon(sample_at_load_start)

            if args.scenario == "bombing":
                report = Report()
                await go()
                await run_bombing(rpc, spec.ws_url, report, attempts=args.attempts, rate=args.attack_rate,
                                  victim=args.victim, ttl_s=spec.ttl_s)
            else:
                report = await _load(args, spec, go)
            sampler.cancel_scope.cancel()
        end = sample_process(args.node_pid) if args.node_pid else None
        if start and start[0] is not None and end is not None:
            report.info["node"] = usage_between(args.node_pid, start[0], end)
        load_stop = load_end[0] if load_end and load_end[0] is not None else end
        if load_start and load_start[0] is not None and load_stop is not None:
            report.info["node_load"] = usage_between(args.node_pid, load_start[0], load_stop)
    return report


async def _load(args: argparse.Namespace, spec: LoadSpec, go: Callable[[], Awaitable[None]]) -> Report:
    progress = Progress(spec.workers, quiet=args.quiet)
    if spec.workers == 1:
        final = await run_worker(spec, progress.update, go)
        finals = [final]
    else:
        finals = await _run_workers(spec, progress, go)
    progress.finish()
    report = Report()
    report.workers = spec.workers
    for final in finals:
        report.merge(final["report"])
        for key, value in final["report"]["info"].items():
            if key in ("drive_s", "connect_s", "storm_reconnect_s"):
                report.info[key] = max(report.info.get(key, 0), value)
            elif key == "sim_cpu_s":
                report.info[key] = round(report.info.get(key, 0) + value, 3)
            else:
                report.info.setdefault(key, value)
    shards = [[entry_from_json(e) for e in final["fleet"]] for final in finals]
    if args.fleet and any(shards):
        # Interleaved, so that worker i of a later run with the same K gets the same phones.
        ordered = [shard[i] for i in range(max(map(len, shards))) for shard in shards if i < len(shard)]
        save_fleet(args.fleet, spec.ws_url, ordered)
        report.info["fleet_saved"] = str(args.fleet)
    return report


async def _run_workers(spec: LoadSpec, progress: Progress, go: Callable[[], Awaitable[None]]) -> list[dict[str, Any]]:
    finals: list[dict[str, Any] | None] = [None] * spec.workers
    processes: list[trio.Process] = []
    ready: set[int] = set()

    async def all_ready(worker: int) -> None:
        ready.add(worker)
        if len(ready) == spec.workers:  # every phone is connected: start the load everywhere
            await go()
            for process in processes:
                assert process.stdin is not None
                await process.stdin.send_all(b"go\n")

    with tempfile.TemporaryDirectory(prefix="pushguard-sim-") as tmp:
        async def one(worker: int) -> None:
            path = Path(tmp) / f"spec-{worker}.json"
            path.write_text(dataclasses.replace(spec, worker=worker).to_json())
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "simulator.worker", str(path)], stdout=subprocess.PIPE,
                stdin=subprocess.PIPE)
            processes.append(process)
            assert process.stdout is not None
            buffer = b""
            async for chunk in process.stdout:
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    message = json.loads(line)
                    if "progress" in message:
                        progress.update(message["progress"])
                    elif "ready" in message:
                        await all_ready(worker)
                    elif "final" in message:
                        finals[worker] = message["final"]
            code = await process.wait()
            if code != 0 or finals[worker] is None:
                raise RuntimeError(f"simulator worker {worker} failed (exit {code})")

        async with trio.open_nursery() as nursery:
            for worker in range(spec.workers):
                nursery.start_soon(one, worker)
    return [f for f in finals if f is not None]


class Progress:
    """One live line: rate, connected phones, open challenges, wrong outcomes."""

    def __init__(self, workers: int, *, quiet: bool, stream: TextIO = sys.stderr):
        self._latest: dict[int, dict[str, Any]] = {}
        self._workers = workers
        self._quiet = quiet
        self._stream = stream
        self._tty = stream.isatty()
        self._start = time.monotonic()
        self._last = (0.0, 0)
        self._printed = 0.0

    def update(self, snapshot: dict[str, Any]) -> None:
        self._latest[snapshot["worker"]] = snapshot
        now = time.monotonic()
        if self._quiet or now - self._printed < (1 if self._tty else 5):
            return
        self._printed = now
        rows = list(self._latest.values())
        total = {key: sum(r.get(key, 0) for r in rows) for key in ("created", "decided", "open", "connected",
                                                                   "failed")}
        phases = sorted({r["phase"] for r in rows})
        then, created_then = self._last
        rate = (total["created"] - created_then) / (now - then) if then else 0.0
        self._last = (now, total["created"])
        line = (f"[{now - self._start:6.1f}s] {'/'.join(phases):<10} rate {rate:7.0f}/s  created {total['created']:>8}"
                f"  decided {total['decided']:>8}  open {total['open']:>6}  connected {total['connected']:>7}"
                f"  wrong {total['failed']}")
        print(("\r" + line) if self._tty else line, end="" if self._tty else "\n", file=self._stream, flush=True)

    def finish(self) -> None:
        if self._tty and not self._quiet and self._printed:
            print(file=self._stream)


class SpawnedNode(LocalNode):
    """A node for one run, in a data directory of its own that goes with it."""

    def __init__(self) -> None:
        self._directory = tempfile.TemporaryDirectory(prefix="pushguard-sim-node-")
        try:
            super().__init__(Path(self._directory.name))
        except BaseException:
            self._directory.cleanup()
            raise

    def stop(self) -> None:
        super().stop()
        self._directory.cleanup()


def _dev_key(data_dir: Path) -> str:
    path = data_dir / "dev-api-key"
    try:
        return path.read_text().strip()
    except OSError:
        raise SystemExit(f"pushguard simulate: no --api-key and no {path}; start the node first "
                         "or pass --spawn-node") from None


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text, text)
