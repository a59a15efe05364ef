"""The push-bombing scenario: an attacker with a user's password hammers the login.

One victim phone, enrolled through the real flow, answers every push the way
`victim` says (deny, ignore, or deny and report fraud). The attacker asks for
`attempts` pushes at `rate`. The report says how many pushes reached the
phone, which must be exactly the challenges the guard admitted and no more
than its policy allows, and when push was suspended for the victim.
"""

from __future__ import annotations

import math
import secrets
from functools import partial

import trio

from engine.protocol.device import ChallengeFrame
from engine.rpc_client import RemoteError, RpcClient
from simulator.autopilot import Answer, run_autopilot
from simulator.device import SimPhone
from simulator.report import Report

RESOURCE = {"kind": "login", "name": "Okta Dashboard"}
ATTACKER = {"app": "Okta Dashboard", "ip": "203.0.113.66", "location": "Unknown", "user_agent": "curl/8.0"}
VICTIM_THINK_S = 0.2


async def run_bombing(rpc: RpcClient, ws_url: str, report: Report, *, attempts: int, rate: float, victim: str,
                      ttl_s: int) -> None:
    policy = await rpc.call("policy.get")
    user = f"victim-{secrets.token_hex(4)}"
    started = await rpc.call("push.begin_enrollment", user, {})
    reached: list[str] = []

    async def behaviour(frame: ChallengeFrame) -> Answer:
        if victim == "ignore":
            return Answer(None)
        return Answer("deny", think_s=VICTIM_THINK_S, fraud=victim == "fraud")

    def seen(phone: SimPhone, message: object) -> None:
        if isinstance(message, ChallengeFrame) and message.id not in reached:
            reached.append(message.id)

    counts = {"accepted": 0, "push_limited": 0, "push_suspended": 0}
    suspended_after: float | None = None
    async with trio.open_nursery() as nursery:
        phone = SimPhone(ws_url, nursery)
        await phone.enroll(started["uri"])
        await nursery.start(partial(run_autopilot, phone, behaviour, on_frame=seen))
        start = trio.current_time()
        for i in range(attempts):
            await trio.sleep_until(start + i / rate)
            try:
                await rpc.call("challenge.create", user, RESOURCE, ATTACKER, {"ttl_s": ttl_s})
                counts["accepted"] += 1
            except RemoteError as err:
                if err.code not in ("push_limited", "push_suspended"):
                    report.expect(False, f"bombing: create failed with {err.code}: {err.message}")
                    continue
                counts[err.code] += 1
                if err.code == "push_suspended" and suspended_after is None:
                    suspended_after = trio.current_time() - start
        await trio.sleep(1)  # the last admitted push reaches the phone
        await phone.close()
        nursery.cancel_scope.cancel()
    duration = attempts / rate
    if victim == "fraud":
        allowed = 1
    elif victim == "deny":
        allowed = min(policy["deny_streak_suspend"], policy["max_per_user_per_hour"])
    else:  # one open push at a time, each lasting ttl_s
        allowed = min(policy["max_per_user_per_hour"], policy["max_open_per_resource"] * math.ceil(duration / ttl_s))
    report.expect(len(reached) == counts["accepted"],
                  f"bombing: {len(reached)} pushes reached the phone but the guard admitted {counts['accepted']}")
    report.expect(counts["accepted"] <= allowed,
                  f"bombing: {counts['accepted']} pushes admitted, the policy allows {allowed}")
    if victim != "ignore":
        report.expect(suspended_after is not None, f"bombing: a victim who answers '{victim}' was never suspended")
    report.counters["created"] += counts["accepted"]
    report.outcomes.update({k: v for k, v in counts.items() if k != "accepted"})
    report.info.update({
        "bombing.victim": f"{user} answers {victim}",
        "bombing.attempts": f"{attempts} at {rate:g}/s",
        "bombing.reached_phone": f"{len(reached)} (policy allows {allowed})",
        "bombing.refused": f"{counts['push_limited']} push_limited, {counts['push_suspended']} push_suspended",
        "bombing.suspended_after": "never" if suspended_after is None else f"{suspended_after:.2f} s",
    })
