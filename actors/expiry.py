"""One timer task for every open challenge's expiry.

A heap of (deadline, challenge_id); the task sleeps until the earliest
deadline, or until a new earlier one arrives. Cancelling is lazy: the entry
stays in the heap and is skipped when it comes up. Per challenge the cost is
one heap push, not one task.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Awaitable, Callable

import trio

log = logging.getLogger(__name__)


class ExpiryTimer:
    def __init__(self, on_expire: Callable[[str], Awaitable[None]]):
        self._on_expire = on_expire
        self._heap: list[tuple[float, str]] = []
        self._deadlines: dict[str, float] = {}
        self._wakeup = trio.Event()

    def schedule(self, challenge_id: str, deadline: float) -> None:
        """Expire the challenge at Trio time `deadline`."""
        self._deadlines[challenge_id] = deadline
        heapq.heappush(self._heap, (deadline, challenge_id))
        if self._heap[0][1] == challenge_id:
            self._wakeup.set()

    def cancel(self, challenge_id: str) -> None:
        self._deadlines.pop(challenge_id, None)

    def __len__(self) -> int:
        return len(self._deadlines)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            self._wakeup = trio.Event()
            deadline = self._heap[0][0] if self._heap else float("inf")
            with trio.move_on_at(deadline):
                await self._wakeup.wait()
            now = trio.current_time()
            while self._heap and self._heap[0][0] <= now:
                deadline, challenge_id = heapq.heappop(self._heap)
                if self._deadlines.get(challenge_id) != deadline:
                    continue  # cancelled or rescheduled
                del self._deadlines[challenge_id]
                try:
                    await self._on_expire(challenge_id)
                except Exception:
                    # The challenge stays pending in the store; a respond to it
                    # still gets `expired`, and a restart expires it again.
                    log.exception("expiring challenge %s failed", challenge_id)
