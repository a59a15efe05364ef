"""One simulator process: its share of the fleet, its share of the load.

`pushguard simulate --workers K` runs K of these (`python -m simulator.worker
SPEC.json`), each with phones of its own on source addresses of its own; a
worker writes JSON lines to stdout: {"progress": ...} every second and
{"final": ...} at the end. With one worker the same code runs in-process.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import random
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from engine.rpc_client import RpcClient
from simulator.driver import Driver
from simulator.faults import Fault, FaultPlan
from simulator.fleet import FleetEntry, enroll_fleet, entry_to_json, load_fleet
from simulator.loadphone import LoadPhone
from simulator.mix import Mix
from simulator.report import Report
from simulator.resources import raise_descriptor_limit, source_addresses

log = logging.getLogger(__name__)

CONNECT_CONCURRENCY = 500
PHONES_PER_ADDRESS = 20_000


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """Everything a worker needs; the CLI builds it, JSON carries it to a worker."""

    rpc_host: str = "127.0.0.1"
    rpc_port: int = 7464
    api_key: str = ""
    ws_url: str = "ws://127.0.0.1:8765/v1/device"
    phones: int = 100
    user_prefix: str = "sim"
    fleet: str | None = None  # a fleet file to reuse (all workers read it)
    rate: float = 50.0
    duration_s: float = 10.0
    max_challenges: int | None = None
    mix: str = "approve=100"
    think: str = "fixed:0"
    biometric: float = 1.0
    offline: float = 0.0
    encoding: str = "msgpack"  # msgpack, json or mixed
    faults: str = ""
    storm_at_s: float | None = None
    ttl_s: int = 10
    match: str | None = None
    worker: int = 0
    workers: int = 1
    seed: int = 1
    rpc_connections: int = 8
    hold_s: float = 0.0  # connected and idle this long before the load starts
    in_flight: int = 0  # >0: closed loop with this many challenges open, instead of --rate

    @property
    def my_phones(self) -> int:
        return self.phones // self.workers + (1 if self.worker < self.phones % self.workers else 0)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> LoadSpec:
        return cls(**json.loads(text))


async def run_worker(spec: LoadSpec, emit: Callable[[dict[str, Any]], None],
                     ready: Callable[[], Awaitable[None]] | None = None) -> dict[str, Any]:
    """Run this worker's part; returns {"report": ..., "fleet": [...] if it enrolled}.

    `ready` is awaited once this worker's phones are connected: with several
    workers it returns when all of them are, so the load starts on a node
    that is done with connecting (else one worker's connect storm would be
    measured as another's latency).
    """
    report = Report()
    mix = Mix.parse(spec.mix, spec.think, spec.biometric)
    faults = FaultPlan.parse(spec.faults, spec.storm_at_s)
    soft, allowed = raise_descriptor_limit()
    report.info.update(fd_soft_limit=soft, connections_per_worker=allowed)
    count = spec.my_phones
    if count > allowed:
        raise SystemExit(f"worker {spec.worker}: {count} phones need more descriptors than the {soft} this "
                         f"process may open ({allowed} after a reserve); use more --workers")
    addresses = source_addresses(max(1, -(-count // PHONES_PER_ADDRESS)), first=f"127.{10 + spec.worker}.0.1")
    rng = random.Random(spec.seed * 1_000_003 + spec.worker)
    enrolled: list[FleetEntry] = []
    async with AsyncExitStack() as stack:
        rpcs = [await stack.enter_async_context(RpcClient.connect(spec.rpc_host, spec.rpc_port, api_key=spec.api_key))
                for _ in range(max(1, spec.rpc_connections))]
        policy = await rpcs[0].call("policy.get")
        if dict(faults.rates).get(Fault.ACK_DELAY) and spec.ttl_s <= policy["ack_timeout_s"] + 2:
            raise SystemExit(f"--faults ack-delay acks after the node's ack_timeout_s ({policy['ack_timeout_s']:g} s): "
                             f"it needs --ttl above {policy['ack_timeout_s'] + 2:g}, or a shorter timeout with "
                             "--policy ack_timeout_s=1")
        before = (await rpcs[0].call("stats.get"))["counters"]
        if spec.fleet and Path(spec.fleet).exists():
            _, entries = load_fleet(Path(spec.fleet))
            entries = entries[spec.worker::spec.workers][:count]
            reused = True
            if len(entries) < count:
                raise SystemExit(f"worker {spec.worker}: the fleet file has {len(entries)} phones for this worker, "
                                 f"{count} asked for")
        else:
            emit({"phase": "enrolling", "worker": spec.worker, "phones": count})
            users = [f"{spec.user_prefix}-{spec.worker}-{i}" for i in range(count)]
            entries = await enroll_fleet(rpcs[0], spec.ws_url, users,
                                         local_address=lambda i: addresses[i % len(addresses)])
            enrolled, reused = entries, False
        async with trio.open_nursery() as nursery:
            online, offline = [], []
            for i, entry in enumerate(entries):
                encoding = spec.encoding if spec.encoding != "mixed" else ("msgpack", "json")[i % 2]
                phone = LoadPhone(entry.phone(spec.ws_url, nursery, encoding=encoding,
                                              local_address=addresses[i % len(addresses)]),
                                  report, ack_timeout_s=float(policy["ack_timeout_s"]), seed=rng.randrange(2**32))
                (offline if rng.random() < spec.offline else online).append(phone)
            report.counters.update(phones=len(entries), phones_offline=len(offline))
            emit({"phase": "connecting", "worker": spec.worker, "phones": len(online)})
            report.info["connect_s"] = round(await _connect_all(online, nursery), 3)
            report.counters["phones_connected"] = sum(p.connected.is_set() for p in online)
            # The phones live as long as the run: keep the collector from walking
            # them (a worker holds up to ~19,000), or its pauses show up as latency.
            gc.collect()
            gc.freeze()
            if ready is not None:
                await ready()
            driver = Driver(rpcs, online, offline, report, mix=mix, faults=faults, policy=policy,
                            ttl_s=spec.ttl_s, match=spec.match, seed=rng.randrange(2**32),
                            offline_share=spec.offline, reused_fleet=reused)
            async with trio.open_nursery() as side:
                side.start_soon(_progress, spec, driver, online, report, emit)
                if spec.hold_s > 0:
                    emit(_snapshot(spec, driver, online, report, "holding"))
                    await trio.sleep(spec.hold_s)
                if faults.storm_at_s is not None:
                    side.start_soon(_storm, faults.storm_at_s, online, report)
                drive_s = 0.0
                cpu_before = time.process_time()
                if spec.in_flight:
                    share = max(1, spec.in_flight // spec.workers)
                    drive_s = await driver.drive_closed(share, spec.duration_s, _my_share(spec))
                elif spec.rate > 0:
                    drive_s = await driver.drive(spec.rate / spec.workers, spec.duration_s, _my_share(spec))
                side.cancel_scope.cancel()
            report.info.update(drive_s=round(drive_s, 3), target_rate=spec.rate, in_flight=spec.in_flight,
                               sim_cpu_s=round(time.process_time() - cpu_before, 3))
            after = (await rpcs[0].call("stats.get"))["counters"]
            fallbacks = after.get("push_fallbacks", 0) - before.get("push_fallbacks", 0)
            expected_fallbacks = report.counters["ack_delays"]
            report.expect(fallbacks >= expected_fallbacks,
                          f"{expected_fallbacks} acks came late but the node fell back to push only {fallbacks} times")
            for phone in online:
                phone.stop()
            nursery.cancel_scope.cancel()
        gc.unfreeze()
    emit(_snapshot(spec, driver, online, report, "done"))
    return {"report": report.to_dict(), "fleet": [entry_to_json(e) for e in enrolled]}


def _my_share(spec: LoadSpec) -> int | None:
    """This worker's part of --challenges."""
    if spec.max_challenges is None:
        return None
    return spec.max_challenges // spec.workers + (1 if spec.worker < spec.max_challenges % spec.workers else 0)


async def _connect_all(phones: list[LoadPhone], nursery: trio.Nursery) -> float:
    """Connect every phone (at most CONNECT_CONCURRENCY handshakes at once); seconds taken."""
    limiter = trio.CapacityLimiter(CONNECT_CONCURRENCY)
    start = trio.current_time()

    async def connect(phone: LoadPhone) -> None:
        async with limiter:
            await nursery.start(phone.run)

    async with trio.open_nursery() as connecting:
        for phone in phones:
            connecting.start_soon(connect, phone)
    return trio.current_time() - start


async def _storm(at_s: float, phones: list[LoadPhone], report: Report) -> None:
    """Every phone drops at once; measure until all are back."""
    await trio.sleep(at_s)
    report.faults.inject(Fault.STORM)
    start = trio.current_time()
    epochs = [phone.reconnects for phone in phones]
    async with trio.open_nursery() as nursery:
        for phone in phones:
            nursery.start_soon(phone.drop)
    back = 0
    with trio.move_on_after(60):
        for phone, epoch in zip(phones, epochs):
            while (phone.reconnects == epoch or not phone.connected.is_set()) and not phone.retired:
                await trio.sleep(0.01)
            back += 1
    elapsed = trio.current_time() - start
    report.info["storm_reconnect_s"] = round(elapsed, 3)
    report.faults.check(Fault.STORM, back == len(phones),
                        f"{len(phones) - back} of {len(phones)} phones were not back within 60 s of the storm")


async def _progress(spec: LoadSpec, driver: Driver, phones: list[LoadPhone], report: Report,
                    emit: Callable[[dict[str, Any]], None]) -> None:
    while True:
        emit(_snapshot(spec, driver, phones, report, "driving"))
        await trio.sleep(1)


def _snapshot(spec: LoadSpec, driver: Driver, phones: list[LoadPhone], report: Report, phase: str) -> dict:
    return {"phase": phase, "worker": spec.worker, "created": report.counters["created"],
            "decided": driver.decided, "open": driver.open,
            "connected": sum(p.connected.is_set() for p in phones), "failed": report.failed}


def main() -> None:
    """`python -m simulator.worker SPEC_JSON_FILE`: JSON lines on stdout."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    spec = LoadSpec.from_json(Path(sys.argv[1]).read_text())

    def emit(progress: dict[str, Any]) -> None:
        print(json.dumps({"progress": progress}), flush=True)

    async def ready() -> None:
        print(json.dumps({"ready": spec.worker}), flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)  # the parent's "go", once all are ready

    final = trio.run(run_worker, spec, emit, ready)
    print(json.dumps({"final": final}), flush=True)


if __name__ == "__main__":
    main()
