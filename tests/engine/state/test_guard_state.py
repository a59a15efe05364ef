"""The push-bombing guard's counters and suspensions, through `GuardState` only.

Runs once per param of the `shared_state` fixture (conftest.py).
"""

from __future__ import annotations

import pytest
import trio

from engine.state.base import HOUR_MS, Admission, GuardState, SharedState, Suspension

pytestmark = pytest.mark.trio

NOW = 1_700_000_000_000
TTL = 60_000
MINUTE = 60_000


@pytest.fixture
def guard(shared_state: SharedState) -> GuardState:
    return shared_state.guard


async def admit(
    guard: GuardState,
    challenge_id: str,
    *,
    user: str = "ada",
    resource: str = "login:vpn",
    at: int = NOW,
    ttl: int = TTL,
    max_open: int = 1,
    max_per_hour: int = 100,
) -> Admission:
    return await guard.admit(
        user, resource, challenge_id,
        max_open=max_open, max_per_hour=max_per_hour, expires_at_ms=at + ttl, now_ms=at,
    )


# --- open challenges per (user, resource) ----------------------------------


async def test_admits_up_to_max_open_then_refuses_with_the_oldest(guard: GuardState) -> None:
    assert (await admit(guard, "c1", at=NOW, max_open=3)).admitted
    assert (await admit(guard, "c2", at=NOW + 1_000, max_open=3)).admitted
    assert (await admit(guard, "c3", at=NOW + 2_000, max_open=3)).admitted

    refused = await admit(guard, "c4", at=NOW + 5_000, max_open=3)

    assert refused == Admission(
        admitted=False,
        reason="open_limit",
        retry_after_ms=NOW + TTL - (NOW + 5_000),  # when c1 expires
        open_challenge_id="c1",
    )


async def test_retrying_when_told_is_admitted(guard: GuardState) -> None:
    await admit(guard, "c1", at=NOW)
    refused = await admit(guard, "c2", at=NOW + 10_000)
    assert refused.reason == "open_limit"
    retry_at = NOW + 10_000 + refused.retry_after_ms

    assert not (await admit(guard, "c2", at=retry_at - 1)).admitted
    assert (await admit(guard, "c2", at=retry_at)).admitted


async def test_expired_challenges_stop_counting(guard: GuardState) -> None:
    await admit(guard, "c1", at=NOW, max_open=2)
    await admit(guard, "c2", at=NOW + 30_000, max_open=2)
    assert await guard.open_count(NOW + 30_000) == 2

    # c1 expired at NOW + TTL, c2 is still open: one slot is free again.
    later = NOW + TTL
    assert await guard.open_count(later) == 1
    assert (await admit(guard, "c3", at=later, max_open=2)).admitted
    refused = await admit(guard, "c4", at=later + 1, max_open=2)
    assert refused.reason == "open_limit"
    assert refused.open_challenge_id == "c2"
    assert refused.retry_after_ms == NOW + 30_000 + TTL - (later + 1)


async def test_release_frees_the_slot(guard: GuardState) -> None:
    await admit(guard, "c1")
    assert not (await admit(guard, "c2", at=NOW + 1)).admitted

    await guard.release("ada", "login:vpn", "c1")

    assert (await admit(guard, "c2", at=NOW + 2)).admitted
    assert await guard.open_count(NOW + 2) == 1


async def test_releasing_an_unknown_challenge_changes_nothing(guard: GuardState) -> None:
    await admit(guard, "c1")

    await guard.release("ada", "login:vpn", "nope")
    await guard.release("bob", "login:vpn", "c1")  # right id, wrong user
    await guard.release("ada", "login:mail", "c1")  # right id, wrong resource

    assert await guard.open_count(NOW) == 1
    assert (await admit(guard, "c2", at=NOW + 1)).reason == "open_limit"


async def test_resources_are_independent(guard: GuardState) -> None:
    assert (await admit(guard, "c1", resource="login:vpn")).admitted
    assert (await admit(guard, "c2", resource="login:mail")).admitted
    assert (await admit(guard, "c3", resource="step_up:payroll")).admitted
    assert (await admit(guard, "c4", resource="login:vpn")).reason == "open_limit"


async def test_users_are_independent(guard: GuardState) -> None:
    assert (await admit(guard, "c1", user="ada")).admitted
    assert (await admit(guard, "c2", user="bob")).admitted
    refused = await admit(guard, "c3", user="ada")
    assert refused.reason == "open_limit"
    assert refused.open_challenge_id == "c1"


async def test_open_count_spans_users_and_resources(guard: GuardState) -> None:
    assert await guard.open_count(NOW) == 0
    await admit(guard, "c1", user="ada", resource="login:vpn")
    await admit(guard, "c2", user="ada", resource="login:mail")
    await admit(guard, "c3", user="bob", resource="login:vpn", ttl=2 * TTL)
    assert await guard.open_count(NOW) == 3

    await guard.release("ada", "login:mail", "c2")
    assert await guard.open_count(NOW) == 2
    assert await guard.open_count(NOW + TTL) == 1  # only bob's longer one is left
    assert await guard.open_count(NOW + 2 * TTL) == 0


# --- hourly budget per user ------------------------------------------------


async def test_hourly_budget_counts_every_resource(guard: GuardState) -> None:
    for n in range(3):
        admission = await admit(guard, f"c{n}", resource=f"login:app{n}", at=NOW + n * MINUTE,
                                max_per_hour=3)
        assert admission.admitted

    refused = await admit(guard, "c3", resource="login:app3", at=NOW + 10 * MINUTE, max_per_hour=3)

    assert refused.admitted is False
    assert refused.reason == "hourly_budget"
    # The oldest admission (at NOW) leaves the one-hour window at NOW + 1 h.
    assert refused.retry_after_ms == NOW + HOUR_MS - (NOW + 10 * MINUTE)


async def test_retrying_when_the_oldest_leaves_the_hour_is_admitted(guard: GuardState) -> None:
    await admit(guard, "c1", resource="login:a", at=NOW, max_per_hour=2)
    await admit(guard, "c2", resource="login:b", at=NOW + 20 * MINUTE, max_per_hour=2)
    refused = await admit(guard, "c3", resource="login:c", at=NOW + 30 * MINUTE, max_per_hour=2)
    retry_at = NOW + 30 * MINUTE + refused.retry_after_ms
    assert retry_at == NOW + HOUR_MS

    assert (await admit(guard, "c3", resource="login:c", at=retry_at - 1,
                        max_per_hour=2)).reason == "hourly_budget"
    assert (await admit(guard, "c3", resource="login:c", at=retry_at, max_per_hour=2)).admitted
    # c2 is still inside the window: the budget is full again until it leaves.
    refused = await admit(guard, "c4", resource="login:d", at=retry_at + 1, max_per_hour=2)
    assert refused.reason == "hourly_budget"
    assert refused.retry_after_ms == NOW + 20 * MINUTE + HOUR_MS - (retry_at + 1)


async def test_release_does_not_refund_the_hourly_budget(guard: GuardState) -> None:
    await admit(guard, "c1", resource="login:a", max_per_hour=1)
    await guard.release("ada", "login:a", "c1")

    refused = await admit(guard, "c2", resource="login:a", at=NOW + 1, max_per_hour=1)

    assert refused.reason == "hourly_budget"


async def test_hourly_budget_is_per_user(guard: GuardState) -> None:
    await admit(guard, "c1", user="ada", max_per_hour=1)
    assert (await admit(guard, "c2", user="bob", max_per_hour=1)).admitted
    assert (await admit(guard, "c3", user="ada", resource="login:other",
                        max_per_hour=1)).reason == "hourly_budget"


async def test_refusals_use_no_budget_and_open_no_slot(guard: GuardState) -> None:
    await admit(guard, "c1", resource="login:a", max_per_hour=3)
    for n in range(5):  # a push-bombing burst on the same resource
        assert (await admit(guard, f"x{n}", resource="login:a", at=NOW + n,
                            max_per_hour=3)).reason == "open_limit"
    assert await guard.open_count(NOW + 10) == 1

    assert (await admit(guard, "c2", resource="login:b", at=NOW + 10, max_per_hour=3)).admitted
    assert (await admit(guard, "c3", resource="login:c", at=NOW + 11, max_per_hour=3)).admitted
    refused = await admit(guard, "c4", resource="login:d", at=NOW + 12, max_per_hour=3)
    assert refused.reason == "hourly_budget"
    assert await guard.open_count(NOW + 12) == 3


async def test_open_limit_is_checked_before_the_hourly_budget(guard: GuardState) -> None:
    await admit(guard, "c1", max_per_hour=1)

    refused = await admit(guard, "c2", at=NOW + 1, max_per_hour=1)

    assert refused.reason == "open_limit"
    assert refused.open_challenge_id == "c1"


async def test_concurrent_admits_let_exactly_one_through(guard: GuardState) -> None:
    results: list[Admission] = []

    async def try_admit(n: int) -> None:
        results.append(await admit(guard, f"c{n}", max_open=1))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(try_admit, n)

    assert len(results) == 20
    assert sum(r.admitted for r in results) == 1
    assert {r.reason for r in results if not r.admitted} == {"open_limit"}
    assert await guard.open_count(NOW) == 1


# --- failure streaks and suspensions ---------------------------------------


async def test_failure_streak_counts_up_and_resets(guard: GuardState) -> None:
    assert [await guard.record_failure("ada") for _ in range(3)] == [1, 2, 3]
    assert await guard.record_failure("bob") == 1  # per user

    await guard.reset_failures("ada")

    assert await guard.record_failure("ada") == 1
    assert await guard.record_failure("bob") == 2


async def test_suspension_is_in_force_until_its_end(guard: GuardState) -> None:
    until = NOW + 20 * MINUTE
    assert await guard.suspension("ada", NOW) is None

    await guard.suspend("ada", until, "deny_streak")

    assert await guard.suspension("ada", NOW) == Suspension(until, "deny_streak")
    assert await guard.suspension("ada", until - 1) == Suspension(until, "deny_streak")
    assert await guard.suspension("bob", NOW) is None
    assert await guard.suspension("ada", until) is None
    assert await guard.suspension("ada", until + MINUTE) is None


async def test_suspend_restarts_the_failure_streak(guard: GuardState) -> None:
    await guard.record_failure("ada")
    await guard.record_failure("ada")

    await guard.suspend("ada", NOW + MINUTE, "fraud")

    assert await guard.record_failure("ada") == 1


async def test_clear_suspension_lifts_it_once_and_restarts_the_streak(guard: GuardState) -> None:
    await guard.suspend("ada", NOW + 20 * MINUTE, "operator")
    await guard.record_failure("ada")
    await guard.record_failure("ada")

    assert await guard.clear_suspension("ada", NOW) is True
    assert await guard.suspension("ada", NOW) is None
    assert await guard.record_failure("ada") == 1
    assert await guard.clear_suspension("ada", NOW) is False


async def test_clear_suspension_without_one_still_restarts_the_streak(guard: GuardState) -> None:
    await guard.record_failure("ada")
    await guard.record_failure("ada")

    assert await guard.clear_suspension("ada", NOW) is False
    assert await guard.record_failure("ada") == 1


async def test_clearing_one_user_leaves_the_others_suspended(guard: GuardState) -> None:
    await guard.suspend("ada", NOW + MINUTE, "operator")
    await guard.suspend("bob", NOW + MINUTE, "fraud")

    assert await guard.clear_suspension("ada", NOW) is True

    assert await guard.suspension("bob", NOW) == Suspension(NOW + MINUTE, "fraud")


async def test_clearing_a_lapsed_suspension_reports_none_was_in_force(guard: GuardState) -> None:
    await guard.suspend("ada", NOW + MINUTE, "deny_streak")

    assert await guard.clear_suspension("ada", NOW + 2 * MINUTE) is False
