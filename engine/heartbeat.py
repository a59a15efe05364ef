"""The heartbeat of every authenticated phone, kept by one task.

Each phone is pinged every `heartbeat_s`; one that has not answered within
`timeout_s` is dropped (its reader closes the socket and tells the actor).

One task for all phones rather than a deadline in each phone's reader: a
reader woken by its deadline is a cancellation, and Trio's cancellation
(unregister from epoll, raise through the stack, register again) cost more
than the ping itself. Measured with 10,000 idle phones, heartbeats were
two thirds of the node's CPU (16% of a core against 5% with heartbeats
off). Here a reader only ever waits for its socket, and a ping is a
short-lived task that queues behind the connection's other writes.

Phones join a queue in the order they authenticate, and since the interval
is the same for all, the queue stays in due order: appending keeps it
sorted, and each round only looks at its head. Answers are awaited in a
heap, since a ping that queued behind a slow write is due later. Rounds run every `tick_s`
at most, so a ping may go out up to a tick late. The queues hold weak
references: a connection that has ended is not kept alive by its place in
line.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import weakref
from collections.abc import Callable
from typing import Protocol

import trio


class _Websocket(Protocol):
    pong_due: float | None

    async def ping(self, timeout_s: float) -> None: ...


class Beating(Protocol):
    """What the heartbeat needs of a connection."""

    ws: _Websocket

    @property
    def ending(self) -> bool: ...


class Heartbeat:
    def __init__(self, heartbeat_s: float, timeout_s: float, on_timeout: Callable[[Beating], None]):
        self.heartbeat_s = heartbeat_s
        self.timeout_s = timeout_s
        self.tick_s = min(0.25, heartbeat_s / 20)
        self._on_timeout = on_timeout
        self._pings: collections.deque[tuple[float, weakref.ref[Beating]]] = collections.deque()
        # (when to look, tie-breaker, connection): a heap, because a ping that
        # waited behind a slow write is due later than its round says.
        self._answers: list[tuple[float, int, weakref.ref[Beating]]] = []
        self._order = itertools.count()
        self._joined = trio.Event()

    def watch(self, conn: Beating) -> None:
        """Ping `conn` from now on, first in `heartbeat_s`, for as long as it lives."""
        self._pings.append((trio.current_time() + self.heartbeat_s, weakref.ref(conn)))
        self._joined.set()

    def __len__(self) -> int:
        """Connections in line for a ping (some may have ended since)."""
        return len(self._pings)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the heartbeat until cancelled."""
        async with trio.open_nursery() as pings:
            task_status.started()
            while True:
                now = trio.current_time()
                self._check_answers(now)
                self._send_pings(now, pings)
                due = min(self._pings[0][0] if self._pings else float("inf"),
                          self._answers[0][0] if self._answers else float("inf"))
                if due == float("inf"):
                    self._joined = trio.Event()
                    await self._joined.wait()
                else:
                    await trio.sleep_until(max(due, now + self.tick_s))

    def _send_pings(self, now: float, nursery: trio.Nursery) -> None:
        while self._pings and self._pings[0][0] <= now:
            _, ref = self._pings.popleft()
            conn = ref()
            if conn is None or conn.ending:
                continue
            if conn.ws.pong_due is None:  # an unanswered ping is judged by _check_answers
                nursery.start_soon(_ping, conn, self.timeout_s)
                heapq.heappush(self._answers, (now + self.timeout_s, next(self._order), ref))
            self._pings.append((now + self.heartbeat_s, ref))

    def _check_answers(self, now: float) -> None:
        while self._answers and self._answers[0][0] <= now:
            _, _, ref = heapq.heappop(self._answers)
            conn = ref()
            if conn is None or conn.ending:
                continue
            # Set when the ping went out (ServerWebsocket.ping), cleared by the pong.
            pong_due = conn.ws.pong_due
            if pong_due is None:
                continue
            if pong_due <= now:
                self._on_timeout(conn)
            else:
                heapq.heappush(self._answers, (pong_due, next(self._order), ref))


async def _ping(conn: Beating, timeout_s: float) -> None:
    try:
        await conn.ws.ping(timeout_s)
    except Exception:  # the connection is over: its reader finds out and ends it
        pass
