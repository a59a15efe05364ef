"""The open-loop challenge driver: challenges at a target rate, each one checked.

Challenge i is due at start + i / rate, whether or not earlier ones have
finished (open loop: a slow node gets a growing queue, not a gentler load).
Each due challenge goes to an idle, connected phone whose user may be
challenged, with a `Plan` drawn from the mix; the driver then waits for the
decision like a backend (challenge.wait) and checks it against what the plan
and the node's policy say must happen.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Any

import trio

from engine.rpc_client import RemoteError, RpcClient
from simulator.faults import Fault, FaultPlan
from simulator.loadphone import LoadPhone, Plan
from simulator.mix import Action, Mix
from simulator.report import Report

LATE_TOLERANCE_S = 0.05  # a start later than this behind schedule counts as late
RESOURCE = {"kind": "login", "name": "pushguard-simulate"}
CONTEXT = {"app": "Load test", "ip": "127.0.0.1", "location": "Loopback", "user_agent": "pushguard-simulate"}
WAIT_SLACK_S = 10.0


@dataclass
class UserState:
    """What the driver knows of one user's standing with the push-bombing guard."""

    deny_streak: int = 0
    challenges: int = 0
    suspended: bool = False


class Driver:
    def __init__(self, rpcs: list[RpcClient], phones: list[LoadPhone], offline: list[LoadPhone], report: Report,
                 *, mix: Mix, faults: FaultPlan, policy: dict[str, Any], ttl_s: int, match: str | None,
                 seed: int, offline_share: float, reused_fleet: bool = False):
        self.rpcs = rpcs
        self.report = report
        self.mix = mix
        self.faults = faults
        self.policy = policy
        self.ttl_s = ttl_s
        self.match = match
        self.rng = random.Random(seed)
        self.offline_share = offline_share
        # A fleet from an earlier run may have spent hourly budgets or earned
        # suspensions this run cannot see: those refusals are then expected.
        self.reused_fleet = reused_fleet
        self.online = phones
        self.offline = offline
        self.idle: deque[LoadPhone] = deque(phones)
        self.idle_offline: deque[LoadPhone] = deque(offline)
        self.users: dict[str, UserState] = {}
        self.open = 0
        self.decided = 0
        self._next_rpc = 0

    # -- the schedule ------------------------------------------------------------------
    async def drive(self, rate: float, duration_s: float, max_challenges: int | None) -> float:
        """Run the schedule; returns the seconds it took, drain excluded."""
        start = trio.current_time()
        counters = self.report.counters
        async with trio.open_nursery() as nursery:
            i = 0
            while max_challenges is None or i < max_challenges:
                due = start + i / rate
                if due - start >= duration_s:
                    break
                await trio.sleep_until(due)
                if trio.current_time() - due > LATE_TOLERANCE_S:
                    counters["late_starts"] += 1
                i += 1
                phone = self._pick()
                if phone is None:
                    counters["no_idle_phone"] += 1
                    continue
                phone.busy = True
                nursery.start_soon(self._challenge, phone)
            drive_s = trio.current_time() - start
        return drive_s

    async def drive_closed(self, in_flight: int, duration_s: float, max_challenges: int | None) -> float:
        """Closed loop: keep `in_flight` challenges open, a new one as each ends,
        for `duration_s` or `max_challenges`: the node's saturation throughput,
        measured the way the bare reference measures its push round trips."""
        start = trio.current_time()
        slots = trio.Semaphore(in_flight)
        started = 0

        async def one(phone: LoadPhone) -> None:
            try:
                await self._challenge(phone)
            finally:
                slots.release()

        async with trio.open_nursery() as nursery:
            while (max_challenges is None or started < max_challenges) and \
                    trio.current_time() - start < duration_s:
                await slots.acquire()
                phone = self._pick()
                if phone is None:
                    slots.release()
                    self.report.counters["no_idle_phone"] += 1
                    await trio.sleep(0.01)
                    continue
                phone.busy = True
                started += 1
                nursery.start_soon(one, phone)
            drive_s = trio.current_time() - start
        return drive_s

    def _pick(self) -> LoadPhone | None:
        """An idle phone whose user may be challenged, offline ones at their share."""
        use_offline = self.idle_offline and self.rng.random() < self.offline_share
        queue = self.idle_offline if use_offline else self.idle
        budget = self.policy["max_per_user_per_hour"]
        for _ in range(len(queue)):
            phone = queue.popleft()
            user = self.users.setdefault(phone.user_id, UserState())
            if phone.retired or user.suspended or user.challenges >= budget:
                continue  # dropped from the pool for good
            if not use_offline and not phone.connected.is_set():
                queue.append(phone)  # reconnecting: try it later
                continue
            return phone
        return None

    def _rpc(self) -> RpcClient:
        self._next_rpc = (self._next_rpc + 1) % len(self.rpcs)
        return self.rpcs[self._next_rpc]

    # -- one challenge -----------------------------------------------------------------
    async def _challenge(self, phone: LoadPhone) -> None:
        report, user = self.report, self.users[phone.user_id]
        offline = phone in self.offline
        action, think_s, biometric = self.mix.draw(self.rng)
        fault = None if offline else self.faults.draw(self.rng)
        if action is Action.IGNORE and fault in (Fault.SKEW, Fault.REPLAY):
            fault = None  # nothing is sent, so there is nothing to fault
        plan = Plan(action, think_s, biometric, fault, created_at=trio.current_time())
        phone.plan = plan
        opts: dict[str, Any] = {"ttl_s": self.ttl_s}
        if self.match:
            opts["match"] = self.match
        rpc = self._rpc()
        self.open += 1
        try:
            try:
                created = await rpc.call("challenge.create", phone.user_id, RESOURCE, CONTEXT, opts)
            except RemoteError as err:
                report.outcomes[err.code] += 1
                earlier = self.reused_fleet and (err.code == "push_suspended" or (
                    err.code == "push_limited" and (err.details or {}).get("reason") == "hourly_budget"))
                if earlier:
                    user.suspended = True  # out of the pool for this run
                report.expect(earlier, f"create for {phone.user_id} failed with {err.code}: {err.message}")
                return
            report.counters["created"] += 1
            user.challenges += 1
            plan.code = created.get("code")
            plan.code_ready.set()
            view = await rpc.call("challenge.wait", created["challenge_id"], self.ttl_s + WAIT_SLACK_S)
            decided_at = trio.current_time()
            status = view["status"]
            report.outcomes[status] += 1
            expected = "expired" if offline else action.expected_status
            report.expect(status == expected,
                          f"{created['challenge_id']} ({action}{', ' + fault if fault else ''}"
                          f"{', offline' if offline else ''}): expected {expected}, saw {status}")
            if status in ("approved", "denied") and fault is None:
                report.observe("create_to_decided", decided_at - plan.created_at - think_s)
            if offline:
                report.expect(view["delivery"]["channel"] not in (None, "websocket"),
                              f"{created['challenge_id']} to an offline phone went by {view['delivery']['channel']}")
            if fault is Fault.ACK_LOSS:
                report.faults.check(fault, view["delivery"]["delivered_at"] is None and status == expected,
                                    f"{created['challenge_id']} never acked, yet delivered_at is "
                                    f"{view['delivery']['delivered_at']} (status {status})")
            if fault is Fault.ACK_DELAY:
                report.counters["ack_delays"] += 1
                report.faults.check(fault, status == expected,
                                    f"{created['challenge_id']} acked late ended {status}, expected {expected}")
            if not offline:
                with trio.move_on_after(WAIT_SLACK_S):
                    await plan.handled.wait()
            self.decided += 1
            await self._after(phone, user, status, view)
        finally:
            self.open -= 1
            phone.plan = None
            phone.busy = False
            (self.idle_offline if offline else self.idle).append(phone)

    async def _after(self, phone: LoadPhone, user: UserState, status: str, view: dict[str, Any]) -> None:
        """Follow the guard's rules: a fraud report or a deny streak must suspend the user."""
        if status == "approved":
            user.deny_streak = 0
            return
        if status != "denied":
            return
        user.deny_streak += 1
        if not view["fraud"] and user.deny_streak < self.policy["deny_streak_suspend"]:
            return
        user.suspended = True
        why = "a fraud report" if view["fraud"] else f"{user.deny_streak} denials in a row"
        try:
            await self._rpc().call("challenge.create", phone.user_id, RESOURCE, CONTEXT, {"ttl_s": self.ttl_s})
        except RemoteError as err:
            self.report.outcomes[f"after_suspension.{err.code}"] += 1
            self.report.expect(err.code == "push_suspended",
                               f"after {why}, {phone.user_id} got {err.code} instead of push_suspended")
            return
        self.report.expect(False, f"after {why}, a new challenge for {phone.user_id} was accepted")
