"""The SQLite store's challenge rate beside a busy event loop, and beside an idle one.

A node under load keeps its Trio thread busy nearly all the time. Whatever
work the store leaves to other threads then has to win the GIL back from a
thread that seldom lets go, so the store can be fast alone and slow in a
node. This measures one challenge's store traffic as the node makes it
(create with its audit row, a delivery receipt, a read, the decision with
its audit row) from many concurrent tasks, twice in one run: with the loop
otherwise idle, and with a task beside it that keeps the loop busy (CPU
work in slices of `busy_slice_ms`, yielding between slices, as a loaded
node does). The ratio of the two is the figure. SQLite runs on the Trio
thread, so a third run, at a fixed 1,000 challenges/s, gives how long it
holds the loop (COMMIT's fsync included): the lag of a task that sleeps
1 ms at a time.

Usage: python -m bench.store_load [--seconds S] [--tasks N] [--json FILE]
"""

from __future__ import annotations

import argparse
import importlib
import json
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from engine.models import (
    AuditEntry,
    Challenge,
    ChallengeStatus,
    Decision,
    Device,
    Platform,
    ResourceKind,
)
from engine.store.sqlite import SqliteStore, open_sqlite_store

USERS = 1_000
PACED_RATE = 1_000  # challenges/s, about twice what one node core sustains end to end


async def _seed(store: SqliteStore, now: int) -> list[Device]:
    devices = [
        Device(
            device_id=f"dev-{i}",
            user_id=f"user-{i}",
            public_key=secrets.token_bytes(32),
            platform=Platform.SIM,
            enrolled_at=now,
        )
        for i in range(USERS)
    ]

    rows = [(d.user_id, d.device_id, d.public_key, str(d.platform)) for d in devices]
    # By the module's importable name: run as `python -m`, this module is
    # __main__, which the store's writer process cannot import.
    await store._write(importlib.import_module("bench.store_load")._insert_devices, rows, now)
    return devices


def _insert_devices(conn: Any, rows: list[tuple[str, str, bytes, str]], now: int) -> None:
    """A write operation (run in the store's writer process): the fleet's users and devices."""
    conn.executemany("INSERT INTO users (user_id, created_at) VALUES (?, ?)", [(r[0], now) for r in rows])
    conn.executemany(
        "INSERT INTO devices (device_id, user_id, public_key, platform, enrolled_at) VALUES (?, ?, ?, ?, ?)",
        [(device_id, user_id, key, platform, now) for user_id, device_id, key, platform in rows],
    )


async def _one_challenge(store: SqliteStore, device: Device, serial: int) -> None:
    now = int(time.time() * 1000)
    challenge = Challenge(
        challenge_id=f"c-{serial}-{secrets.token_hex(4)}",
        user_id=device.user_id,
        device_id=device.device_id,
        resource_kind=ResourceKind.LOGIN,
        resource_name="bench",
        context={"app": "bench", "ip": "127.0.0.1", "location": "", "user_agent": "bench"},
        created_at=now,
        expires_at=now + 60_000,
        context_hash=secrets.token_hex(16),
    )
    created = AuditEntry(at=now, kind="challenge.created", challenge_id=challenge.challenge_id)
    await store.active_device_for_user(device.user_id)
    await store.create_challenge(challenge, [created])
    store.record_delivery_soon(challenge.challenge_id, channel="websocket", sent_at=now)
    decided = AuditEntry(at=now, kind="challenge.decided", challenge_id=challenge.challenge_id)
    await store.decide_challenge(
        challenge.challenge_id,
        Decision(status=ChallengeStatus.APPROVED, decided_at=now, reason="user"),
        [decided],
    )


async def _busy(slice_ms: float, stop: trio.Event) -> None:
    """Keep the Trio thread busy as a loaded node does: CPU slices, yielding between."""
    while not stop.is_set():
        end = time.perf_counter() + slice_ms / 1000
        while time.perf_counter() < end:
            pass
        await trio.sleep(0)


async def _ticker(lags: list[float], stop: trio.Event) -> None:
    """How late a 1 ms sleep wakes: how long the loop was held (by COMMIT's fsync, say)."""
    while not stop.is_set():
        start = time.perf_counter()
        await trio.sleep(0.001)
        lags.append(time.perf_counter() - start - 0.001)


async def _measure(store: SqliteStore, devices: list[Device], *, tasks: int, seconds: float,
                   busy_slice_ms: float | None) -> float:
    done = 0
    stop = trio.Event()

    async def worker(k: int) -> None:
        nonlocal done
        serial = k
        while not stop.is_set():
            await _one_challenge(store, devices[serial % len(devices)], serial)
            done += 1
            serial += tasks

    async with trio.open_nursery() as nursery:
        if busy_slice_ms is not None:
            nursery.start_soon(_busy, busy_slice_ms, stop)
        start = time.perf_counter()
        for k in range(tasks):
            nursery.start_soon(worker, k)
        await trio.sleep(seconds)
        stop.set()
        elapsed = time.perf_counter() - start
        counted = done
    return counted / elapsed


async def _paced(store: SqliteStore, devices: list[Device], *, rate: float, seconds: float) -> list[float]:
    """Challenges started at `rate` per second, and the loop's lag meanwhile."""
    lags: list[float] = []
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_ticker, lags, stop)
        start = time.perf_counter()
        serial = 0
        while (elapsed := time.perf_counter() - start) < seconds:
            while serial < elapsed * rate:
                nursery.start_soon(_one_challenge, store, devices[serial % len(devices)], 10_000_000 + serial)
                serial += 1
            await trio.sleep(0.001)
        stop.set()
    return lags


async def run(*, seconds: float, tasks: int, busy_slice_ms: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pushguard-store-bench-") as tmp:
        async with open_sqlite_store(Path(tmp) / "store.db") as store:
            devices = await _seed(store, int(time.time() * 1000))
            await _measure(store, devices, tasks=tasks, seconds=min(1.0, seconds), busy_slice_ms=None)
            idle = await _measure(store, devices, tasks=tasks, seconds=seconds, busy_slice_ms=None)
            busy = await _measure(
                store, devices, tasks=tasks, seconds=seconds, busy_slice_ms=busy_slice_ms
            )
            lags = await _paced(store, devices, rate=PACED_RATE, seconds=seconds)
    return {
        "tasks": tasks,
        "seconds": seconds,
        "busy_slice_ms": busy_slice_ms,
        "challenges_per_s_idle_loop": round(idle, 1),
        "challenges_per_s_busy_loop": round(busy, 1),
        "ratio": round(busy / idle, 3) if idle else None,
        "paced_rate": PACED_RATE,
        "loop_lag_ms_at_paced_rate": _percentiles(lags),
    }


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples) or [0.0]

    def at(share: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(share * len(ordered)))], 2)

    return {"p50": at(0.5), "p99": at(0.99), "p99.9": at(0.999), "max": round(1000 * ordered[-1], 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.store_load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="each measurement's length (default 5)")
    parser.add_argument("--tasks", type=int, default=200, help="concurrent challenges (default 200)")
    parser.add_argument("--busy-slice-ms", type=float, default=1.0,
                        help="CPU slice of the busy task between yields (default 1 ms)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    result = trio.run(lambda: run(seconds=args.seconds, tasks=args.tasks, busy_slice_ms=args.busy_slice_ms))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
