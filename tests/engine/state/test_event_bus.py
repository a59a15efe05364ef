"""Event fan-out, through `EventBus` and `Subscription` only.

Runs once per param of the `shared_state` fixture (conftest.py). Delivery may
cross a network in other implementations, so reads wait under a deadline on
the real clock instead of assuming that a published event is there at once.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from engine.state.base import EventBus, SharedState, Subscription

pytestmark = pytest.mark.trio

DEADLINE_S = 5


@pytest.fixture
def bus(shared_state: SharedState) -> EventBus:
    return shared_state.bus


async def take(subscription: Subscription, n: int) -> list[tuple[str, dict[str, Any]]]:
    """The next `n` (topic, event) pairs, failing if they do not come in time."""
    received: list[tuple[str, dict[str, Any]]] = []
    if n == 0:
        return received
    with trio.fail_after(DEADLINE_S):
        async for item in subscription:
            received.append(item)
            if len(received) == n:
                break
    assert len(received) == n, f"the stream ended after {received!r}"
    return received


async def test_subscribers_get_events_published_after_subscribing_in_order(bus: EventBus) -> None:
    await bus.publish("challenges", {"n": -1})  # before anyone listens: not delivered

    async with bus.subscribe(["challenges"]) as first, bus.subscribe(["challenges"]) as second:
        for n in range(5):
            await bus.publish("challenges", {"n": n})

        expected = [("challenges", {"n": n}) for n in range(5)]
        assert await take(first, 5) == expected
        assert await take(second, 5) == expected
        assert not first.overflowed and not second.overflowed


async def test_other_topics_are_not_delivered(bus: EventBus) -> None:
    async with bus.subscribe(["challenges"]) as challenges, \
            bus.subscribe(["devices", "challenges"]) as both:
        await bus.publish("devices", {"device": "phone-1"})
        await bus.publish("guard", {"user": "ada"})
        await bus.publish("challenges", {"challenge": "c1"})

        assert await take(challenges, 1) == [("challenges", {"challenge": "c1"})]
        assert await take(both, 2) == [("devices", {"device": "phone-1"}),
                                       ("challenges", {"challenge": "c1"})]

        # Nothing else is queued for the challenges-only subscriber: the next
        # thing it sees is the next challenges event.
        await bus.publish("devices", {"device": "phone-2"})
        await bus.publish("challenges", {"challenge": "c2"})
        assert await take(challenges, 1) == [("challenges", {"challenge": "c2"})]


async def test_a_stalled_subscriber_is_cut_off_without_slowing_the_others(bus: EventBus) -> None:
    buffer = 8
    total = 10 * buffer
    fast_received: list[int] = []

    async with bus.subscribe(["t"], buffer=buffer) as stalled, bus.subscribe(["t"]) as fast:

        async def read_fast() -> None:
            async for _, event in fast:
                fast_received.append(event["n"])
                if len(fast_received) == total:
                    return

        # If publish waited for the stalled subscriber, this would never end.
        with trio.fail_after(DEADLINE_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_fast)
                for n in range(total):
                    await bus.publish("t", {"n": n})
                    await trio.sleep(0)  # let the fast reader keep up

        assert fast_received == list(range(total))
        assert not fast.overflowed

        # The stalled stream ends by itself, having seen at most a prefix.
        with trio.fail_after(DEADLINE_S):
            stalled_received = [event["n"] async for _, event in stalled]
        assert stalled.overflowed is True
        assert len(stalled_received) < total
        assert stalled_received == list(range(len(stalled_received)))
        assert bus.overflows == 1

        # The fast subscriber keeps receiving after the slow one was cut off.
        await bus.publish("t", {"n": total})
        assert await take(fast, 1) == [("t", {"n": total})]
        assert bus.overflows == 1


async def test_leaving_the_subscription_unsubscribes(bus: EventBus) -> None:
    async with bus.subscribe(["t"]) as staying:
        async with bus.subscribe(["t"], buffer=1) as leaving:
            pass

        # Were `leaving` still subscribed, its one-event buffer would overflow.
        with trio.fail_after(DEADLINE_S):
            for n in range(5):
                await bus.publish("t", {"n": n})

        assert await take(staying, 5) == [("t", {"n": n}) for n in range(5)]
        assert leaving.overflowed is False
        assert bus.overflows == 0


async def test_publishing_without_subscribers_is_harmless(bus: EventBus) -> None:
    with trio.fail_after(DEADLINE_S):
        for n in range(100):
            await bus.publish("nobody", {"n": n})

    assert bus.overflows == 0
    async with bus.subscribe(["nobody"]) as late:
        await bus.publish("nobody", {"n": 100})
        assert await take(late, 1) == [("nobody", {"n": 100})]
