"""TOTP verifications per second against a running node, beside its cheapest RPC.

Users are enrolled and confirmed through the API, each with a simulated
authenticator. "Valid" verifications use the next time step's code (inside
the drift window and later than the confirmation's step), once per user;
"wrong" ones go on for a while with codes that never match, which costs the
node what any failure costs (the throttle is counted; lockouts change
nothing in the work done). The reference is policy.get over the same
connections: what one request costs with nothing behind it.
"""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from typing import Any

import trio

from engine.rpc_client import RpcClient
from simulator.authenticator import Authenticator

CONNECTIONS = 4


async def run_totp_load(rpc_port: int, api_key: str, users: int, seconds: float, concurrency: int) -> dict[str, Any]:
    async with AsyncExitStack() as stack:
        rpcs = [await stack.enter_async_context(RpcClient.connect("127.0.0.1", rpc_port, api_key=api_key))
                for _ in range(CONNECTIONS)]
        apps: dict[str, Authenticator] = {}

        async def enroll(i: int) -> None:
            user = f"totp-bench-{i}"
            rpc = rpcs[i % CONNECTIONS]
            started = await rpc.call("totp.begin_enrollment", user, {})
            app = Authenticator()
            app.scan(started["otpauth_uri"])
            await rpc.call("totp.confirm", user, app.code(user))
            apps[user] = app

        await _bounded(users, concurrency, enroll)
        names = list(apps)
        valid_ok = 0

        async def valid(i: int) -> None:
            nonlocal valid_ok
            user = names[i]
            answer = await rpcs[i % CONNECTIONS].call("totp.verify", user, apps[user].code(user, offset_steps=1))
            valid_ok += answer["valid"]

        start = time.perf_counter()
        await _bounded(len(names), concurrency, valid)
        valid_s = time.perf_counter() - start
        wrong = await _for_a_while(seconds, concurrency, lambda i: rpcs[i % CONNECTIONS].call(
            "totp.verify", names[i % len(names)], "000000x"))
        reference = await _for_a_while(seconds / 2, concurrency, lambda i: rpcs[i % CONNECTIONS].call("policy.get"))
    return {
        "users": len(names), "valid_accepted": valid_ok, "valid_per_s": round(len(names) / valid_s, 1),
        "wrong_per_s": round(wrong, 1), "policy_get_per_s": round(reference, 1),
        "ratio_wrong_to_rpc": round(wrong / reference, 3),
    }


async def _bounded(count: int, concurrency: int, work) -> None:
    limiter = trio.CapacityLimiter(concurrency)

    async def one(i: int) -> None:
        async with limiter:
            await work(i)

    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(one, i)


async def _for_a_while(seconds: float, concurrency: int, call) -> float:
    """Calls per second with `concurrency` in flight, for `seconds`."""
    done = 0
    deadline = trio.current_time() + seconds

    async def worker(k: int) -> None:
        nonlocal done
        i = k
        while trio.current_time() < deadline:
            await call(i)
            done += 1
            i += concurrency

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for k in range(concurrency):
            nursery.start_soon(worker, k)
    return done / (time.perf_counter() - start)
