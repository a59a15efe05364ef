"""Wall-clock time for timestamps on the wire, tied to Trio's clock for deadlines.

Timestamps on the wire are milliseconds since the Unix epoch; deadlines inside
the node are Trio times. `Clock` converts between the two so that tests can run
challenge expiry on Trio's MockClock: a clock anchored to Trio time moves when
the MockClock jumps.
"""

from __future__ import annotations

import time

import trio


class Clock:
    """Wall-clock milliseconds, read from the system."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def trio_deadline(self, wall_ms: int) -> float:
        """The Trio time at which the wall clock reads `wall_ms`."""
        return trio.current_time() + (wall_ms - self.now_ms()) / 1000.0


class TrioAnchoredClock(Clock):
    """Wall-clock milliseconds that advance with Trio's clock (MockClock in tests).

    Must be created inside a Trio run.
    """

    def __init__(self, epoch_ms: int | None = None):
        self._epoch_ms = time.time_ns() // 1_000_000 if epoch_ms is None else epoch_ms
        self._trio0 = trio.current_time()

    def now_ms(self) -> int:
        return self._epoch_ms + int((trio.current_time() - self._trio0) * 1000)

    def trio_deadline(self, wall_ms: int) -> float:
        return self._trio0 + (wall_ms - self._epoch_ms) / 1000.0
