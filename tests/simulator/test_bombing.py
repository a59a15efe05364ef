"""The push-bombing scenario against a real node: what reached the phone, and when push stopped."""

from __future__ import annotations

import math
import re

import pytest

from simulator.bombing import run_bombing
from simulator.report import Report
from tests.conftest import ws_url

pytestmark = pytest.mark.trio

ATTEMPTS, RATE, TTL_S = 20, 20.0, 5


@pytest.mark.parametrize("victim", ["deny", "fraud", "ignore"])
async def test_bombing_reaches_the_phone_only_as_often_as_the_policy_allows(node, rpc, victim):
    policy = await rpc.call("policy.get")
    report = Report()
    await run_bombing(rpc, ws_url(node), report, attempts=ATTEMPTS, rate=RATE, victim=victim, ttl_s=TTL_S)
    text = report.render()
    assert report.failed == 0, text
    assert "-> PASS" in text

    admitted = report.counters["created"]
    refused = report.outcomes["push_limited"] + report.outcomes["push_suspended"]
    assert admitted + refused == ATTEMPTS
    reached, allowed = map(int, re.fullmatch(r"(\d+) \(policy allows (\d+)\)",
                                             report.info["bombing.reached_phone"]).groups())
    assert reached == admitted >= 1
    expected_allowed = {
        "fraud": 1,  # one fraud report suspends push at once
        "deny": min(policy["deny_streak_suspend"], policy["max_per_user_per_hour"]),
        "ignore": min(policy["max_per_user_per_hour"],
                      policy["max_open_per_resource"] * math.ceil(ATTEMPTS / RATE / TTL_S)),
    }[victim]
    assert allowed == expected_allowed
    assert admitted <= allowed
    suspended_after = report.info["bombing.suspended_after"]
    if victim == "ignore":
        assert report.checks == {"ok": 2}
        assert suspended_after == "never"
        assert report.outcomes["push_suspended"] == 0
        assert report.outcomes["push_limited"] == ATTEMPTS - admitted
    else:
        assert report.checks == {"ok": 3}
        assert admitted == allowed  # each answered push frees the way for the next, until suspended
        assert report.outcomes["push_suspended"] > 0
        seconds = float(suspended_after.removesuffix(" s"))
        assert 0 < seconds < ATTEMPTS / RATE
    assert f"answers {victim}" in text
    assert f"reached phone: {reached} (policy allows {allowed})" in text
