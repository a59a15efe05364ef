"""Fault plans (parsing, drawing) and the tally of injected faults and their checked outcomes."""

from __future__ import annotations

import json
import math
import random
from collections import Counter

import pytest

from simulator.faults import Fault, FaultPlan, FaultTally

PER_CHALLENGE = [f for f in Fault if f.per_challenge]


def within(observed: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(observed - n * p) <= sigmas * math.sqrt(n * p * (1 - p)) + 1


# -- parsing -----------------------------------------------------------------------------

def test_parse_gives_each_fault_its_probability():
    plan = FaultPlan.parse("flap=0.02, ack-delay=0.05,ack-loss=0.01,skew=0.01,replay=0.01,garbage=0.01,oversize=0.01",
                           storm_at_s=3)
    assert dict(plan.rates) == {Fault.FLAP: 0.02, Fault.ACK_DELAY: 0.05, Fault.ACK_LOSS: 0.01, Fault.SKEW: 0.01,
                                Fault.REPLAY: 0.01, Fault.GARBAGE: 0.01, Fault.OVERSIZE: 0.01}
    assert plan.storm_at_s == 3


def test_no_faults_is_a_plan_that_never_draws_one():
    plan = FaultPlan.parse("")
    assert plan.rates == () and plan.storm_at_s is None
    rng = random.Random(1)
    assert all(plan.draw(rng) is None for _ in range(1000))


def test_only_the_storm_is_not_per_challenge():
    assert [f for f in Fault if not f.per_challenge] == [Fault.STORM]


@pytest.mark.parametrize("text, storm_at, message", [
    ("flip=0.1", None, "unknown fault 'flip'"),
    ("storm=0.1", None, "--storm-at"),
    ("flap", None, "flap needs a probability"),
    ("flap=often", None, "flap needs a probability"),
    ("flap=1.5", None, "flap must be a probability from 0 to 1"),
    ("flap=-0.1", None, "flap must be a probability from 0 to 1"),
    ("flap=nan", None, "flap must be a probability from 0 to 1"),
    ("flap=0.6,replay=0.6", None, "add up to more than 1"),
    ("flap=0.1", -1, "--storm-at"),
])
def test_bad_plans_are_refused_clearly(text, storm_at, message):
    with pytest.raises(ValueError, match=message):
        FaultPlan.parse(text, storm_at)


def test_the_unknown_fault_message_lists_the_per_challenge_faults_only():
    with pytest.raises(ValueError) as caught:
        FaultPlan.parse("bogus=0.1")
    for fault in PER_CHALLENGE:
        assert repr(fault.value) in str(caught.value)
    assert "'storm'" not in str(caught.value)


@pytest.mark.parametrize("text", [
    "flap=1",
    "flap=0.5,replay=0.5",
    "skew=0.2,replay=0.4,flap=0.3,garbage=0.1",  # summed left to right in floats: 1.0000000000000002
    "garbage=0.3,oversize=0.6,skew=0.1",
])
def test_probabilities_that_add_up_to_exactly_one_are_accepted(text):
    plan = FaultPlan.parse(text)
    rng = random.Random(4)
    assert all(plan.draw(rng) is not None for _ in range(1000))


# -- drawing -----------------------------------------------------------------------------

def test_draws_follow_the_rates():
    rates = {Fault.FLAP: 0.05, Fault.ACK_DELAY: 0.1, Fault.ACK_LOSS: 0.02, Fault.SKEW: 0.03, Fault.REPLAY: 0.04,
             Fault.GARBAGE: 0.01, Fault.OVERSIZE: 0.05}
    plan = FaultPlan.parse(",".join(f"{f}={r}" for f, r in rates.items()))
    rng = random.Random(77)
    n = 50_000
    drawn = Counter(plan.draw(rng) for _ in range(n))
    for fault, rate in rates.items():
        assert within(drawn[fault], n, rate), (fault, drawn)
    assert within(drawn[None], n, 1 - sum(rates.values())), drawn


def test_at_most_one_fault_per_draw_the_faults_exclude_each_other():
    # Were faults drawn independently, some draws would carry none (0.25) or both.
    plan = FaultPlan.parse("flap=0.5,replay=0.5")
    rng = random.Random(8)
    n = 10_000
    drawn = Counter(plan.draw(rng) for _ in range(n))
    assert set(drawn) == {Fault.FLAP, Fault.REPLAY}
    assert within(drawn[Fault.FLAP], n, 0.5)
    assert all(isinstance(plan.draw(rng), Fault) for _ in range(100))


def test_a_zero_rate_is_never_drawn_and_draws_are_repeatable():
    plan = FaultPlan.parse("flap=0,skew=0.2")
    rng_a, rng_b = random.Random(13), random.Random(13)
    a = [plan.draw(rng_a) for _ in range(5000)]
    assert a == [plan.draw(rng_b) for _ in range(5000)]
    assert Fault.FLAP not in a and Fault.SKEW in a


# -- the tally ---------------------------------------------------------------------------

def test_tally_counts_injected_passed_failed_and_disturbed():
    tally = FaultTally()
    for _ in range(3):
        tally.inject(Fault.REPLAY)
    tally.check(Fault.REPLAY, True, "fine")
    tally.check(Fault.REPLAY, False, "the copy was accepted")
    tally.disturb(Fault.REPLAY)
    tally.inject(Fault.FLAP)
    tally.check(Fault.FLAP, True, "fine")
    assert tally.injected == {"replay": 3, "flap": 1}
    assert tally.passed == {"replay": 1, "flap": 1}
    assert tally.failed == {"replay": 1}
    assert tally.disturbed == {"replay": 1}
    assert tally.failures == ["replay: the copy was accepted"]


def test_tally_keeps_only_the_first_examples_but_counts_every_failure():
    tally = FaultTally()
    for i in range(FaultTally.MAX_EXAMPLES + 5):
        tally.check(Fault.SKEW, False, f"number {i}")
    assert tally.failed[Fault.SKEW] == FaultTally.MAX_EXAMPLES + 5
    assert len(tally.failures) == FaultTally.MAX_EXAMPLES
    assert tally.failures[0] == "skew: number 0"
    assert tally.failures[-1] == f"skew: number {FaultTally.MAX_EXAMPLES - 1}"


def test_tally_merges_through_json():
    a, b = FaultTally(), FaultTally()
    a.inject(Fault.FLAP)
    a.check(Fault.FLAP, False, "not re-sent")
    b.inject(Fault.FLAP)
    b.inject(Fault.GARBAGE)
    b.check(Fault.FLAP, True, "")
    b.check(Fault.GARBAGE, False, "no bad_frame")
    b.disturb(Fault.GARBAGE)
    a.merge(json.loads(json.dumps(b.to_dict())))
    assert a.injected == {"flap": 2, "garbage": 1}
    assert a.passed == {"flap": 1}
    assert a.failed == {"flap": 1, "garbage": 1}
    assert a.disturbed == {"garbage": 1}
    assert a.failures == ["flap: not re-sent", "garbage: no bad_frame"]


def test_merging_respects_the_examples_cap():
    a, b = FaultTally(), FaultTally()
    for i in range(15):
        a.check(Fault.OVERSIZE, False, f"a{i}")
        b.check(Fault.OVERSIZE, False, f"b{i}")
    a.merge(b.to_dict())
    assert a.failed[Fault.OVERSIZE] == 30
    assert len(a.failures) == FaultTally.MAX_EXAMPLES
    assert a.failures[:15] == [f"oversize: a{i}" for i in range(15)]
    full = FaultTally(failures=[f"x{i}" for i in range(FaultTally.MAX_EXAMPLES)])
    full.merge(b.to_dict())
    assert len(full.failures) == FaultTally.MAX_EXAMPLES
