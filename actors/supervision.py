"""Erlang-style restart intensity: at most N restarts within a period."""

from __future__ import annotations

from collections import deque

import trio


class RestartBudget:
    """Allows `max_restarts` restarts within any `period_s` window (Trio time)."""

    def __init__(self, max_restarts: int, period_s: float):
        self.max_restarts = max_restarts
        self.period_s = period_s
        # Made on the first restart: one budget lives with every active actor,
        # and almost none of them ever crash.
        self._restarts: deque[float] | None = None

    def allow(self) -> bool:
        """Record a restart if the budget allows it; False means escalate."""
        now = trio.current_time()
        if self._restarts is None:
            self._restarts = deque()
        while self._restarts and self._restarts[0] <= now - self.period_s:
            self._restarts.popleft()
        if len(self._restarts) >= self.max_restarts:
            return False
        self._restarts.append(now)
        return True
