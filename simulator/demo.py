"""`pushguard demo`: one node on embedded defaults, four simulated phones, six logins.

It starts a real node (SQLite in a fresh data directory, in-memory shared
state) on loopback ports, enrolls phones through the real enrollment flow,
and plays the scenarios a user of push MFA meets: an approval, a denial, a
timeout, a push-bombing burst that the guard blocks (and the fraud report
that suspends push), a step-up with number matching, and a password reset
that requires biometrics. Every challenge's lifecycle is printed as the node
reports it. Exits 0 only if every scenario ended as it should.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import trio

from engine.config import Config, Listener
from engine.node import open_node
from engine.protocol.device import ChallengeFrame
from engine.rpc_client import RemoteError, RpcClient
from simulator.autopilot import Answer, run_autopilot
from simulator.device import SimPhone

DEMO_DIR = Path(".demo-data")


class LoginScreen:
    """What the login page shows next to a pending push (the number to match)."""

    def __init__(self) -> None:
        self._codes: dict[str, str | None] = {}
        self._shown: dict[str, trio.Event] = {}

    def show(self, challenge_id: str, code: str | None) -> None:
        self._codes[challenge_id] = code
        self._shown.setdefault(challenge_id, trio.Event()).set()

    async def read(self, challenge_id: str) -> str | None:
        await self._shown.setdefault(challenge_id, trio.Event()).wait()
        return self._codes[challenge_id]


class Demo:
    def __init__(self, out: TextIO):
        self.out = out
        self.t0 = time.monotonic()
        self.screen = LoginScreen()
        self.plans: dict[str, Answer] = {}  # resource name -> what the user does
        self.failures: list[str] = []

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.2f}s] {text}", file=self.out, flush=True)

    def check(self, what: str, ok: bool) -> None:
        self.say(f"{'PASS' if ok else 'FAIL'}  {what}")
        if not ok:
            self.failures.append(what)

    async def behaviour(self, frame: ChallengeFrame) -> Answer:
        plan = self.plans.get(frame.resource.name, Answer("approve", 0.2))
        if plan.decision == "approve" and frame.match == "type":
            plan = dataclasses.replace(plan, code=await self.screen.read(frame.id))
        return plan

    def print_event(self, event: dict[str, Any]) -> None:
        kind = event.get("kind", "?")
        who = event.get("user_id", "")
        cid = event.get("challenge_id", "")
        extra = {k: v for k, v in event.items()
                 if k in ("status", "reason", "resource", "channel", "provider", "until", "retry_after_s",
                          "changes", "by")}
        detail = " ".join(f"{k}={v}" for k, v in extra.items())
        self.say(f"  event {kind:<20} {who:<6} {cid[:14]:<14} {detail}")

    async def follow_events(self, rpc: RpcClient, *, task_status: trio.TaskStatus[None]) -> None:
        with rpc.notifications() as notifications:
            await rpc.call("events.subscribe", ["challenge.", "guard.", "device.enrolled", "fraud.",
                                                "device.revoked"])
            task_status.started()
            async for note in notifications:
                if note.method == "event":
                    self.print_event(note.params[0])

    async def run(self, config: Config) -> int:
        async with open_node(config) as node:
            key = next(iter(node.api_keys))
            self.say(f"node up: phones on ws://127.0.0.1:{node.ws_port}/v1/device, "
                     f"backends on 127.0.0.1:{node.rpc_port}; data in {config.data_dir}")
            async with RpcClient.connect("127.0.0.1", node.rpc_port, api_key=key) as rpc, \
                    RpcClient.connect("127.0.0.1", node.rpc_port, api_key=key) as feed, \
                    trio.open_nursery() as nursery:
                await nursery.start(self.follow_events, feed)
                phones = {}
                async with trio.open_nursery() as pilots:
                    for user in ("alice", "bob", "carol", "dave"):
                        started = await rpc.call("push.begin_enrollment", user, {})
                        phone = SimPhone(f"ws://127.0.0.1:{node.ws_port}/v1/device", nursery,
                                         device_name=f"{user}'s phone")
                        await phone.enroll(started["uri"])
                        phones[user] = phone
                        await pilots.start(run_autopilot, phone, self.behaviour)
                        self.say(f"enrolled {user}: device {phone.device_id}")
                    await self.scenarios(rpc)
                    pilots.cancel_scope.cancel()
                for phone in phones.values():
                    await phone.close()
                nursery.cancel_scope.cancel()
            stats = await self.stats(node)
            self.say(f"stats: {stats}")
        self.say("node stopped cleanly")
        if self.failures:
            self.say(f"{len(self.failures)} scenario(s) failed: {self.failures}")
            return 1
        self.say("all scenarios ended as expected")
        return 0

    async def stats(self, node) -> dict[str, Any]:
        snapshot = await node.stats_snapshot()
        return {"decisions": snapshot["decisions"], "limiter_blocks": snapshot["limiter_blocks"],
                "suspensions": snapshot["suspensions"],
                "delivery_p50_ms": snapshot["delivery_latency_ms"]["p50"]}

    async def login(self, rpc: RpcClient, user: str, kind: str, name: str, answer: Answer,
                    opts: dict[str, Any] | None = None) -> dict[str, Any]:
        self.plans[name] = answer
        context = {"app": name, "ip": "203.0.113.10", "location": "Boulder, CO, US",
                   "user_agent": "Firefox 133 on macOS"}
        created = await rpc.call("challenge.create", user, {"kind": kind, "name": name}, context, opts or {})
        self.screen.show(created["challenge_id"], created.get("code"))
        if "code" in created:
            self.say(f"login screen for {user} shows the number {created['code']}")
        return await rpc.call("challenge.wait", created["challenge_id"], 30)

    async def scenarios(self, rpc: RpcClient) -> None:
        self.say("--- 1. alice logs in to the User Portal and approves")
        result = await self.login(rpc, "alice", "login", "User Portal", Answer("approve", 0.3))
        self.check("alice's login approved", result["status"] == "approved")

        self.say("--- 2. bob did not start this SAML login: he denies it")
        result = await self.login(rpc, "bob", "login", "Salesforce (SAML)", Answer("deny", 0.3))
        self.check("bob's login denied", result["status"] == "denied")

        self.say("--- 3. carol's phone is in her bag: the push times out")
        result = await self.login(rpc, "carol", "device_login", "carol-macbook", Answer(None),
                                  {"ttl_s": 2})
        self.check("carol's login expired", result["status"] == "expired")

        self.say("--- 4. an attacker with dave's password hammers the login (push bombing)")
        # Dave takes a second to read the push; by then the burst is over.
        self.plans["Okta Dashboard"] = Answer("deny", 1.0, fraud=True)
        admitted, limited = [], []

        async def attempt() -> None:
            try:
                admitted.append(await rpc.call("challenge.create", "dave",
                                               {"kind": "login", "name": "Okta Dashboard"},
                                               {"ip": "198.51.100.66", "location": "unknown"}))
            except RemoteError as err:
                limited.append(err)

        async with trio.open_nursery() as burst:
            for _ in range(10):
                burst.start_soon(attempt)
        self.check(f"1 of 10 pushes reached dave's phone, {len(limited)} were push_limited",
                   len(admitted) == 1 and all(e.code == "push_limited" for e in limited))
        self.say("dave sees a login he did not start: he denies it and reports fraud")
        result = await rpc.call("challenge.wait", admitted[0]["challenge_id"], 30)
        self.check("the fraud report denied the push", result["status"] == "denied" and result["fraud"])
        try:
            await rpc.call("challenge.create", "dave", {"kind": "login", "name": "Okta Dashboard"}, {})
            self.check("push suspended for dave", False)
        except RemoteError as err:
            self.check(f"push suspended for dave ({err.details['reason']})", err.code == "push_suspended")
        cleared = await rpc.call("guard.clear", "dave")
        self.check("an operator lifted dave's suspension", cleared["cleared"])

        self.say("--- 5. alice opens Payroll, which needs step-up with number matching")
        result = await self.login(rpc, "alice", "step_up", "Payroll", Answer("approve", 0.3),
                                  {"match": "type"})
        self.check("alice's step-up approved with the matching number", result["status"] == "approved")

        self.say("--- 6. bob resets his password; the admin requires biometrics")
        result = await self.login(rpc, "bob", "password_reset", "User Portal password",
                                  Answer("approve", 0.3, biometric=True), {"require_biometric": True})
        self.check("bob's password reset approved with biometrics",
                   result["status"] == "approved" and result["biometric"])


def demo_config(data_dir: Path) -> Config:
    return Config(data_dir=data_dir, ws=Listener(port=0), rpc=Listener(port=0), node_id="demo")


def main(data_dir: Path = DEMO_DIR, out: TextIO = sys.stdout) -> int:
    """Run the demo in a fresh `data_dir`; returns the process exit code."""
    shutil.rmtree(data_dir, ignore_errors=True)
    return trio.run(Demo(out).run, demo_config(data_dir))
