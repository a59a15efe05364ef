"""In-memory shared state for a single node.

Each method runs without awaiting in its body, so under Trio it is atomic;
that is an implementation detail here, and callers do not rely on it beyond
what engine/state/base.py promises.
"""

from __future__ import annotations

import heapq
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import trio

from engine.state.base import HOUR_MS, Admission, SharedState, Suspension


class MemoryGuardState:
    def __init__(self) -> None:
        # (user, resource) -> {challenge_id: expires_at_ms}
        self._open: dict[tuple[str, str], dict[str, int]] = {}
        # user -> admission times in the last hour, oldest first
        self._admitted: dict[str, deque[int]] = {}
        self._failures: dict[str, int] = defaultdict(int)
        self._suspensions: dict[str, Suspension] = {}

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
        key = (user_id, resource_key)
        open_now = {cid: exp for cid, exp in self._open.get(key, {}).items() if exp > now_ms}
        if len(open_now) >= max_open:
            oldest_id, oldest_exp = min(open_now.items(), key=lambda item: item[1])
            self._open[key] = open_now
            return Admission(False, "open_limit", max(oldest_exp - now_ms, 0), oldest_id)
        window = self._admitted.setdefault(user_id, deque())
        while window and window[0] <= now_ms - HOUR_MS:
            window.popleft()
        if len(window) >= max_per_hour:
            return Admission(False, "hourly_budget", window[0] + HOUR_MS - now_ms)
        window.append(now_ms)
        open_now[challenge_id] = expires_at_ms
        self._open[key] = open_now
        return Admission(True)

    async def release(self, user_id: str, resource_key: str, challenge_id: str) -> None:
        key = (user_id, resource_key)
        entries = self._open.get(key)
        if entries is not None:
            entries.pop(challenge_id, None)
            if not entries:
                del self._open[key]

    async def open_count(self, now_ms: int) -> int:
        return sum(1 for entries in self._open.values() for exp in entries.values() if exp > now_ms)

    async def record_failure(self, user_id: str) -> int:
        self._failures[user_id] += 1
        return self._failures[user_id]

    async def reset_failures(self, user_id: str) -> None:
        self._failures.pop(user_id, None)

    async def suspend(self, user_id: str, until_ms: int, reason: str) -> None:
        self._suspensions[user_id] = Suspension(until_ms, reason)
        self._failures.pop(user_id, None)

    async def suspension(self, user_id: str, now_ms: int) -> Suspension | None:
        found = self._suspensions.get(user_id)
        if found is not None and found.until_ms <= now_ms:
            del self._suspensions[user_id]
            return None
        return found

    async def clear_suspension(self, user_id: str, now_ms: int) -> bool:
        self._failures.pop(user_id, None)
        found = self._suspensions.pop(user_id, None)
        return found is not None and found.until_ms > now_ms


class MemoryPresence:
    def __init__(self) -> None:
        self._where: dict[str, tuple[str, str, int]] = {}

    async def connected(self, device_id: str, node_id: str, conn_id: str, now_ms: int) -> None:
        self._where[device_id] = (node_id, conn_id, now_ms)

    async def disconnected(self, device_id: str, conn_id: str) -> None:
        found = self._where.get(device_id)
        if found is not None and found[1] == conn_id:
            del self._where[device_id]

    async def lookup(self, device_id: str) -> tuple[str, str, int] | None:
        return self._where.get(device_id)

    async def count(self) -> int:
        return len(self._where)


class MemoryReplayCache:
    """Seen keys with their expiry; expired keys are swept from a heap as time passes."""

    def __init__(self) -> None:
        self._expiry: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []

    async def claim(self, key: str, ttl_ms: int, now_ms: int) -> bool:
        while self._heap and self._heap[0][0] <= now_ms:
            expires, old = heapq.heappop(self._heap)
            if self._expiry.get(old) == expires:
                del self._expiry[old]
        expires = self._expiry.get(key)
        if expires is not None and expires > now_ms:
            return False
        self._expiry[key] = now_ms + ttl_ms
        heapq.heappush(self._heap, (now_ms + ttl_ms, key))
        return True


class _MemorySubscription:
    def __init__(self, buffer: int, topics: tuple[str, ...]) -> None:
        self.overflowed = False
        self.topics = topics
        self._send, self._receive = trio.open_memory_channel[tuple[str, dict[str, Any]]](buffer)

    def offer(self, topic: str, event: dict[str, Any]) -> bool:
        """Queue without waiting; False (and the stream ends) when the buffer is full."""
        try:
            self._send.send_nowait((topic, event))
            return True
        except trio.WouldBlock:
            self.overflowed = True
            self._send.close()
            return False
        except trio.ClosedResourceError:
            return False

    def __aiter__(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        # The channel itself, not an async generator, so a consumer may break
        # out of its loop without leaving a generator to finalise.
        return self._receive.__aiter__()

    def close(self) -> None:
        self._send.close()
        self._receive.close()


class MemoryEventBus:
    def __init__(self) -> None:
        self._subscribers: dict[str, set[_MemorySubscription]] = defaultdict(set)
        self._overflows = 0

    @property
    def overflows(self) -> int:
        return self._overflows

    async def publish(self, topic: str, event: dict[str, Any]) -> None:
        subscribers = self._subscribers.get(topic)
        if not subscribers:
            return
        for subscription in list(subscribers):
            if not subscription.offer(topic, event) and subscription.overflowed:
                self._overflows += 1
                self._drop(subscription)

    def _drop(self, subscription: _MemorySubscription) -> None:
        # Only its own topics: unsubscribing must not cost one step per topic in use.
        for topic in subscription.topics:
            subscribers = self._subscribers.get(topic)
            if subscribers is not None:
                subscribers.discard(subscription)
                if not subscribers:
                    del self._subscribers[topic]

    @asynccontextmanager
    async def subscribe(
        self, topics: Iterable[str], *, buffer: int = 1000
    ) -> AsyncIterator[_MemorySubscription]:
        subscription = _MemorySubscription(buffer, tuple(topics))
        for topic in subscription.topics:
            self._subscribers[topic].add(subscription)
        try:
            yield subscription
        finally:
            self._drop(subscription)
            subscription.close()


def memory_state() -> SharedState:
    return SharedState(
        guard=MemoryGuardState(),
        presence=MemoryPresence(),
        replay=MemoryReplayCache(),
        bus=MemoryEventBus(),
    )
