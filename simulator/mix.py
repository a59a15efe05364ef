"""What simulated users do: a behaviour mix, think times, biometrics.

`--mix approve=70,deny=10,ignore=10,fraud=10` weights the four things a user
can do with a push; `--think exp:0.3` is how long they take to decide. Each
draw comes from a seeded `random.Random`, so a run is repeatable.
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass


class Action(enum.StrEnum):
    APPROVE = "approve"
    DENY = "deny"
    IGNORE = "ignore"  # let it expire
    FRAUD = "fraud"  # deny and report fraud

    @property
    def expected_status(self) -> str:
        """What the backend's challenge.wait must end with."""
        return {"approve": "approved", "deny": "denied", "ignore": "expired", "fraud": "denied"}[self.value]


@dataclass(frozen=True, slots=True)
class Distribution:
    """Think time in seconds: fixed:S, uniform:LO:HI, exp:MEAN or lognormal:MEDIAN:SIGMA."""

    kind: str
    a: float = 0.0
    b: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Distribution:
        """Raises:
            ValueError: with what the text should look like.
        """
        name, *args = text.split(":")
        try:
            numbers = [float(x) for x in args]
        except ValueError:
            raise ValueError(f"think time {text!r}: the arguments must be numbers") from None
        arity = {"fixed": 1, "uniform": 2, "exp": 1, "lognormal": 2}
        if name not in arity or len(numbers) != arity[name]:
            raise ValueError(f"think time {text!r}: expected fixed:S, uniform:LO:HI, exp:MEAN or "
                             "lognormal:MEDIAN:SIGMA (seconds)")
        if any(n < 0 or not math.isfinite(n) for n in numbers) or (name == "uniform" and numbers[0] > numbers[1]):
            raise ValueError(f"think time {text!r}: the numbers must be finite, non-negative and ordered")
        return cls(name, *numbers)

    def draw(self, rng: random.Random) -> float:
        match self.kind:
            case "fixed":
                return self.a
            case "uniform":
                return rng.uniform(self.a, self.b)
            case "exp":
                return rng.expovariate(1 / self.a) if self.a > 0 else 0.0
            case _:
                return self.a * math.exp(rng.gauss(0, self.b)) if self.a > 0 else 0.0

    def __str__(self) -> str:
        args = {"fixed": [self.a], "exp": [self.a]}.get(self.kind, [self.a, self.b])
        return ":".join([self.kind, *(f"{x:g}" for x in args)])


@dataclass(frozen=True, slots=True)
class Mix:
    """The share of each action, think time, and how often users have biometrics."""

    weights: tuple[tuple[Action, float], ...] = ((Action.APPROVE, 1.0),)
    think: Distribution = Distribution("fixed", 0.0)
    biometric: float = 1.0  # probability that an approval carries biometric: true

    @classmethod
    def parse(cls, mix: str, think: str = "fixed:0", biometric: float = 1.0) -> Mix:
        """`mix` as "approve=70,deny=10,...".

        Raises:
            ValueError: unknown action, bad or all-zero weights, bad think time.
        """
        weights: dict[Action, float] = {}
        for part in filter(None, (p.strip() for p in mix.split(","))):
            name, sep, value = part.partition("=")
            try:
                action = Action(name.strip())
            except ValueError:
                raise ValueError(f"mix: unknown action {name!r}; use {[a.value for a in Action]}") from None
            try:
                weight = float(value) if sep else 1.0
            except ValueError:
                raise ValueError(f"mix: weight of {name} must be a number") from None
            if weight < 0 or not math.isfinite(weight):
                raise ValueError(f"mix: weight of {name} must be non-negative")
            weights[action] = weight
        if not weights or sum(weights.values()) <= 0:
            raise ValueError("mix: give at least one action a positive weight")
        if not 0 <= biometric <= 1:
            raise ValueError("biometric must be a probability from 0 to 1")
        return cls(tuple(weights.items()), Distribution.parse(think), biometric)

    def draw(self, rng: random.Random) -> tuple[Action, float, bool]:
        """(action, think time in seconds, biometric) for one challenge."""
        actions, weights = zip(*self.weights, strict=True)
        action = rng.choices(actions, weights)[0]
        return action, self.think.draw(rng), rng.random() < self.biometric

    def describe(self) -> str:
        total = sum(w for _, w in self.weights)
        shares = ", ".join(f"{a} {w / total:.0%}" for a, w in self.weights if w > 0)
        return f"{shares}; think {self.think}; biometric {self.biometric:.0%}"
