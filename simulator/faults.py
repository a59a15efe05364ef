"""Faults on demand, each with the outcome the node must show.

`--faults flap=0.02,ack-delay=0.05,...` gives each kind a probability per
challenge; `--storm-at S` drops every phone at once S seconds into the run.
An injected fault is checked: the simulator records whether the node did
what the protocol says, and a wrong outcome is a failure of the run.

| fault       | what the phone does                          | what must happen                                   |
|-------------|----------------------------------------------|----------------------------------------------------|
| flap        | drops its socket on receiving the challenge  | reconnect finds it in welcome.pending; decided     |
| ack-delay   | acks after the node's ack timeout             | the node falls back to push; still decided         |
| ack-loss    | never acks                                    | decided; the backend sees no delivered_at          |
| skew        | signs its answer 5 minutes in the future      | error bad_signature, challenge stays open; a fresh answer decides it |
| replay      | sends its answer twice                        | result, then error bad_signature for the copy      |
| garbage     | sends a frame that is not msgpack/JSON         | error bad_frame; the fifth protocol error on a socket closes it with 1008 |
| oversize    | sends a frame over 64 KiB                      | error too_large (same counting)                    |
| storm       | every phone drops and returns at once         | every phone reconnects; open challenges still decided |
"""

from __future__ import annotations

import enum
import math
import random
from collections import Counter
from dataclasses import dataclass, field


class Fault(enum.StrEnum):
    FLAP = "flap"
    ACK_DELAY = "ack-delay"
    ACK_LOSS = "ack-loss"
    SKEW = "skew"
    REPLAY = "replay"
    GARBAGE = "garbage"
    OVERSIZE = "oversize"
    STORM = "storm"  # not drawn per challenge: --storm-at

    @property
    def per_challenge(self) -> bool:
        return self is not Fault.STORM


SKEW_S = 300  # well outside the node's 60 s allowance
OVERSIZE_BYTES = 70 * 1024
PROTOCOL_ERRORS_BEFORE_CLOSE = 5  # the node's DeviceSession max_errors


@dataclass(frozen=True, slots=True)
class FaultPlan:
    rates: tuple[tuple[Fault, float], ...] = ()
    storm_at_s: float | None = None

    @classmethod
    def parse(cls, text: str, storm_at_s: float | None = None) -> FaultPlan:
        """Raises:
            ValueError: unknown fault or a probability outside 0..1.
        """
        rates: dict[Fault, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, _, value = part.partition("=")
            try:
                fault = Fault(name.strip())
            except ValueError:
                raise ValueError(f"faults: unknown fault {name!r}; use "
                                 f"{[f.value for f in Fault if f.per_challenge]}") from None
            if not fault.per_challenge:
                raise ValueError("faults: the reconnect storm is --storm-at SECONDS")
            try:
                rate = float(value)
            except ValueError:
                raise ValueError(f"faults: {name} needs a probability, as {name}=0.05") from None
            if not 0 <= rate <= 1 or not math.isfinite(rate):
                raise ValueError(f"faults: {name} must be a probability from 0 to 1")
            rates[fault] = rate
        if sum(rates.values()) > 1 + 1e-9:  # float sums of tenths overshoot by an ulp
            raise ValueError("faults: the probabilities add up to more than 1")
        if storm_at_s is not None and storm_at_s < 0:
            raise ValueError("--storm-at must be a time in seconds from the start")
        return cls(tuple(rates.items()), storm_at_s)

    def draw(self, rng: random.Random) -> Fault | None:
        """At most one fault for one challenge."""
        roll = rng.random()
        for fault, rate in self.rates:
            if roll < rate:
                return fault
            roll -= rate
        return None


@dataclass
class FaultTally:
    """Injected faults and how the node answered them."""

    injected: Counter[str] = field(default_factory=Counter)
    passed: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    disturbed: Counter[str] = field(default_factory=Counter)  # a lost socket cut the check short
    failures: list[str] = field(default_factory=list)  # the first few, for the report

    MAX_EXAMPLES = 20

    def inject(self, fault: Fault) -> None:
        self.injected[fault] += 1

    def disturb(self, fault: Fault) -> None:
        self.disturbed[fault] += 1

    def check(self, fault: Fault, ok: bool, what: str) -> None:
        if ok:
            self.passed[fault] += 1
            return
        self.failed[fault] += 1
        if len(self.failures) < self.MAX_EXAMPLES:
            self.failures.append(f"{fault}: {what}")

    def to_dict(self) -> dict:
        return {"injected": dict(self.injected), "passed": dict(self.passed), "failed": dict(self.failed),
                "disturbed": dict(self.disturbed), "failures": list(self.failures)}

    def merge(self, other: dict) -> None:
        self.injected.update(other["injected"])
        self.passed.update(other["passed"])
        self.failed.update(other["failed"])
        self.disturbed.update(other["disturbed"])
        room = self.MAX_EXAMPLES - len(self.failures)
        self.failures.extend(other["failures"][:max(room, 0)])
