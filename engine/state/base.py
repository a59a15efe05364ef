"""Shared state: what every node of a cluster must see the same way.

Open challenges and limiter counters (the push-bombing guard), suspensions,
device presence, replay protection for device tokens, and event fan-out. One
machine uses engine/state/memory.py; a cluster will use Redis. Callers rely
only on these interfaces: every guarantee a caller needs (for instance, that
`admit` checks and records in one step) is stated here, and each
implementation passes tests/engine/state/ unchanged.

Times are passed in by the caller (wall-clock ms), so that implementations
agree on one clock and tests can drive it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

HOUR_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class Admission:
    """The push-bombing guard's answer to one new challenge."""

    admitted: bool
    reason: str | None = None  # "open_limit" or "hourly_budget" when refused
    retry_after_ms: int = 0
    open_challenge_id: str | None = None  # the oldest open challenge, when refused for open_limit


@dataclass(frozen=True, slots=True)
class Suspension:
    until_ms: int
    reason: str  # "deny_streak", "fraud" or "operator"


class GuardState(Protocol):
    """Counters behind the push-bombing guard and suspensions."""

    async def admit(
        self,
        user_id: str,
        resource_key: str,
        challenge_id: str,
        *,
        max_open: int,
        max_per_hour: int,
        expires_at_ms: int,
        now_ms: int,
    ) -> Admission:
        """Atomically check and record one new challenge.

        Open challenges whose expiry has passed no longer count. Refused with
        "open_limit" when the user already has `max_open` open challenges for
        `resource_key` (retry when the oldest expires), else with
        "hourly_budget" when `max_per_hour` challenges were admitted for the
        user, any resource, in the last hour (retry when the oldest leaves the
        window). Admitted challenges count as open until `release`.
        """

    async def release(self, user_id: str, resource_key: str, challenge_id: str) -> None:
        """The challenge ended: it no longer counts as open (the hourly budget keeps it)."""

    async def open_count(self, now_ms: int) -> int:
        """Open challenges across all users (for stats)."""

    async def record_failure(self, user_id: str) -> int:
        """Count one denial or failed match; returns the consecutive count."""

    async def reset_failures(self, user_id: str) -> None:
        """An approval ends the streak."""

    async def suspend(self, user_id: str, until_ms: int, reason: str) -> None:
        """Suspend push for the user; the failure streak starts again at zero."""

    async def suspension(self, user_id: str, now_ms: int) -> Suspension | None:
        """The user's suspension if it is still in force."""

    async def clear_suspension(self, user_id: str, now_ms: int) -> bool:
        """Lift a suspension and the failure streak; True if one was in force at now_ms."""


class Presence(Protocol):
    """Which node holds each device's live connection."""

    async def connected(self, device_id: str, node_id: str, conn_id: str, now_ms: int) -> None: ...

    async def disconnected(self, device_id: str, conn_id: str) -> None:
        """Forget the device's presence, only if `conn_id` is still the one recorded
        (a newer connection elsewhere must not be forgotten)."""

    async def lookup(self, device_id: str) -> tuple[str, str, int] | None:
        """(node_id, conn_id, since_ms) or None."""

    async def count(self) -> int: ...


class ReplayCache(Protocol):
    """Keys seen recently, so that a signed token is accepted once (its jti)."""

    async def claim(self, key: str, ttl_ms: int, now_ms: int) -> bool:
        """True the first time `key` is claimed within ttl_ms; False after."""


class Subscription(Protocol):
    """A stream of (topic, event) pairs. It ends early, with `overflowed` set,
    when the subscriber fell more than its buffer behind."""

    overflowed: bool

    def __aiter__(self) -> AsyncIterator[tuple[str, dict[str, Any]]]: ...


class EventBus(Protocol):
    """Fan-out of events to subscribers on any node. Publishing never waits
    for a subscriber: a slow one is cut off instead."""

    async def publish(self, topic: str, event: dict[str, Any]) -> None: ...

    def subscribe(
        self, topics: Iterable[str], *, buffer: int = 1000
    ) -> AbstractAsyncContextManager[Subscription]:
        """Subscribe to the topics for the duration of the `async with`.
        Events published after `__aenter__` returns are delivered."""

    @property
    def overflows(self) -> int:
        """How many subscribers were cut off for being slow."""


@dataclass(frozen=True, slots=True)
class SharedState:
    """The bundle a node is built with."""

    guard: GuardState
    presence: Presence
    replay: ReplayCache
    bus: EventBus
