"""Node-local counters and delivery-latency percentiles for `stats.get`."""

from __future__ import annotations

from collections import Counter, deque
from typing import Any


class LatencyWindow:
    """The last `size` observations in ms; percentiles are computed on demand,
    so the per-message cost is one append."""

    def __init__(self, size: int = 10_000):
        self._values: deque[float] = deque(maxlen=size)

    def observe(self, value_ms: float) -> None:
        self._values.append(value_ms)

    def percentiles(self, points: tuple[float, ...] = (50, 90, 99)) -> dict[str, float | None]:
        ordered = sorted(self._values)
        result: dict[str, float | None] = {}
        for point in points:
            if not ordered:
                result[f"p{point:g}"] = None
                continue
            index = min(len(ordered) - 1, int(round(point / 100 * (len(ordered) - 1))))
            result[f"p{point:g}"] = ordered[index]
        result["count"] = len(ordered)
        return result


class NodeStats:
    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self.delivery_ms = LatencyWindow()  # create -> phone's ack
        self.shown_ms = LatencyWindow()  # create -> on screen

    def incr(self, name: str, amount: int = 1) -> None:
        self.counters[name] += amount

    def snapshot(self) -> dict[str, Any]:
        decisions = {key.removeprefix("decided."): value for key, value in self.counters.items()
                     if key.startswith("decided.")}
        others = {key: value for key, value in self.counters.items() if not key.startswith("decided.")}
        return {
            "decisions": decisions,
            "counters": others,
            "delivery_latency_ms": self.delivery_ms.percentiles(),
            "shown_latency_ms": self.shown_ms.percentiles(),
        }
