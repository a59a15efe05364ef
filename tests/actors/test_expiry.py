"""The single timer task that expires open challenges at their deadlines.

Runs on Trio's MockClock: time jumps straight to the next deadline, so the
times recorded below are exact. pytest-trio hands a Clock-valued fixture to
`trio.run` only when the test function itself requests it, so every test
takes `autojump_clock` (pytest-trio's MockClock(autojump_threshold=0)), and
the `timer` fixture refuses to run on any other clock.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
import trio
from trio.testing import MockClock

from actors.expiry import ExpiryTimer

pytestmark = pytest.mark.trio


class Expiries:
    """The on_expire callback: records (challenge_id, trio time) of each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []
        self.fail_for: set[str] = set()

    async def __call__(self, challenge_id: str) -> None:
        self.calls.append((challenge_id, trio.current_time()))
        if challenge_id in self.fail_for:
            raise RuntimeError(f"store unavailable while expiring {challenge_id}")

    @property
    def ids(self) -> list[str]:
        return [challenge_id for challenge_id, _ in self.calls]


@pytest.fixture
def expiries() -> Expiries:
    return Expiries()


@pytest.fixture
async def timer(expiries: Expiries) -> AsyncIterator[ExpiryTimer]:
    """A running timer; its task is cancelled (and must end) when the test ends."""
    assert isinstance(trio.lowlevel.current_clock(), MockClock), \
        "request autojump_clock in the test function"
    expiry = ExpiryTimer(expiries)
    async with trio.open_nursery() as nursery:
        await nursery.start(expiry.run)
        yield expiry
        nursery.cancel_scope.cancel()


async def test_challenges_expire_at_their_deadlines_in_deadline_order(
    autojump_clock: MockClock, timer: ExpiryTimer, expiries: Expiries
) -> None:
    start = trio.current_time()
    timer.schedule("c-late", start + 30)
    timer.schedule("c-early", start + 10)
    timer.schedule("c-mid", start + 20)

    await trio.sleep(60)

    assert expiries.calls == [
        ("c-early", start + 10), ("c-mid", start + 20), ("c-late", start + 30),
    ]
    assert len(timer) == 0


async def test_nothing_expires_before_its_deadline(
    autojump_clock: MockClock, timer: ExpiryTimer, expiries: Expiries
) -> None:
    start = trio.current_time()
    timer.schedule("c1", start + 10)

    await trio.sleep_until(start + 9.999)
    assert expiries.calls == []
    assert len(timer) == 1

    await trio.sleep_until(start + 10.001)
    assert expiries.calls == [("c1", start + 10)]


async def test_a_past_deadline_expires_at_once(
    autojump_clock: MockClock, timer: ExpiryTimer, expiries: Expiries
) -> None:
    start = trio.current_time()
    timer.schedule("late", start - 5)

    await trio.sleep(0.001)

    assert expiries.calls == [("late", start)]


async def test_cancel_prevents_expiry(
    autojump_clock: MockClock, timer: ExpiryTimer, expiries: Expiries
) -> None:
    start = trio.current_time()
    timer.schedule("decided", start + 10)
    timer.schedule("open", start + 20)

    timer.cancel("decided")
    timer.cancel("never-scheduled")  # harmless

    assert len(timer) == 1
    await trio.sleep(60)
    assert expiries.calls == [("open", start + 20)]


async def test_rescheduling_to_a_later_deadline_fires_only_the_later_one(
    autojump_clock: MockClock, timer: ExpiryTimer, expiries: Expiries
) -> None:
    start = trio.current_time()
    timer.schedule("c1", start + 10)
    timer.schedule("c1", start + 25)

    assert len(timer) == 1
    await trio.sleep(60)
    assert expiries.calls == [("c1", start + 25)]


async def test_rescheduling_to_an_earlier_deadline_fires_only_the_earlier_one(
    autojump_clock: MockClock, timer: ExpiryTimer, expiries: Expiries
) -> None:
    start = trio.current_time()
    timer.schedule("c1", start + 25)
    await trio.sleep(1)
    timer.schedule("c1", start + 10)

    await trio.sleep(60)
    assert expiries.calls == [("c1", start + 10)]


async def test_a_new_earlier_deadline_wakes_the_timer(
    autojump_clock: MockClock, timer: ExpiryTimer, expiries: Expiries
) -> None:
    start = trio.current_time()
    timer.schedule("far", start + 100)
    await trio.sleep(1)  # the timer is now asleep until start + 100

    timer.schedule("near", start + 5)

    await trio.sleep(10)
    assert expiries.calls == [("near", start + 5)]
    await trio.sleep(100)
    assert expiries.calls == [("near", start + 5), ("far", start + 100)]


async def test_a_timer_with_nothing_to_do_wakes_for_the_first_deadline(
    autojump_clock: MockClock, timer: ExpiryTimer, expiries: Expiries
) -> None:
    start = trio.current_time()
    await trio.sleep(1_000)  # idle: nothing may fire, nothing may spin

    timer.schedule("c1", start + 1_003)

    await trio.sleep(10)
    assert expiries.calls == [("c1", start + 1_003)]


async def test_a_failing_callback_is_logged_and_the_timer_keeps_going(
    autojump_clock: MockClock,
    timer: ExpiryTimer,
    expiries: Expiries,
    caplog: pytest.LogCaptureFixture,
) -> None:
    start = trio.current_time()
    expiries.fail_for.add("broken")
    timer.schedule("broken", start + 10)
    timer.schedule("same-time", start + 10)
    timer.schedule("after", start + 20)

    with caplog.at_level(logging.ERROR, logger="actors.expiry"):
        await trio.sleep(60)

    assert sorted(expiries.calls[:2]) == [("broken", start + 10), ("same-time", start + 10)]
    assert expiries.calls[2] == ("after", start + 20)
    failures = [r for r in caplog.records
                if r.name == "actors.expiry" and r.levelno >= logging.ERROR]
    assert len(failures) == 1
    assert "broken" in failures[0].getMessage()
    assert failures[0].exc_info is not None and failures[0].exc_info[0] is RuntimeError

    # Still running: a challenge scheduled after the failure expires too.
    timer.schedule("later", trio.current_time() + 5)
    await trio.sleep(10)
    assert expiries.ids[-1] == "later"


async def test_len_counts_pending_challenges(autojump_clock: MockClock, timer: ExpiryTimer) -> None:
    start = trio.current_time()
    assert len(timer) == 0
    timer.schedule("c1", start + 10)
    timer.schedule("c2", start + 20)
    timer.schedule("c3", start + 30)
    timer.schedule("c3", start + 40)  # rescheduled: still one challenge
    assert len(timer) == 3

    timer.cancel("c2")
    assert len(timer) == 2

    await trio.sleep(15)
    assert len(timer) == 1  # c1 expired
    await trio.sleep(30)
    assert len(timer) == 0


async def test_a_callback_may_schedule_another_expiry(
    autojump_clock: MockClock,
) -> None:
    calls: list[tuple[str, float]] = []
    timer: ExpiryTimer

    async def on_expire(challenge_id: str) -> None:
        calls.append((challenge_id, trio.current_time()))
        if challenge_id == "first":
            timer.schedule("second", trio.current_time() + 5)

    timer = ExpiryTimer(on_expire)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(timer.run)
        timer.schedule("first", start + 10)
        await trio.sleep(60)
        nursery.cancel_scope.cancel()

    assert calls == [("first", start + 10), ("second", start + 15)]


async def test_many_challenges_expire_in_deadline_order(
    autojump_clock: MockClock, timer: ExpiryTimer, expiries: Expiries
) -> None:
    start = trio.current_time()
    deadlines = {f"c{n}": start + ((n * 37) % 101) + 1 for n in range(101)}
    for challenge_id, deadline in deadlines.items():
        timer.schedule(challenge_id, deadline)
    for n in range(0, 101, 10):
        timer.cancel(f"c{n}")

    await trio.sleep(200)

    expected = sorted((d, cid) for cid, d in deadlines.items() if int(cid[1:]) % 10 != 0)
    assert [(t, cid) for cid, t in expiries.calls] == expected
    assert len(timer) == 0
