"""Behaviour mixes and think-time distributions: parsing, seeded draws, description."""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter

import pytest

from simulator.mix import Action, Distribution, Mix

DRAWS = 20_000


def within(observed: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    """`observed` successes of `n` draws is within `sigmas` standard deviations of p."""
    return abs(observed - n * p) <= sigmas * math.sqrt(n * p * (1 - p)) + 1


# -- distributions ---------------------------------------------------------------------

@pytest.mark.parametrize("text, kind, a, b", [
    ("fixed:0.5", "fixed", 0.5, 0.0),
    ("fixed:0", "fixed", 0.0, 0.0),
    ("uniform:0.1:0.3", "uniform", 0.1, 0.3),
    ("uniform:2:2", "uniform", 2.0, 2.0),
    ("exp:0.3", "exp", 0.3, 0.0),
    ("lognormal:0.2:0.5", "lognormal", 0.2, 0.5),
])
def test_distribution_parses_and_prints_back(text, kind, a, b):
    dist = Distribution.parse(text)
    assert (dist.kind, dist.a, dist.b) == (kind, a, b)
    assert str(dist) == text
    assert Distribution.parse(str(dist)) == dist


@pytest.mark.parametrize("text, message", [
    ("gauss:1", "expected fixed:S"),
    ("", "expected fixed:S"),
    ("fixed", "expected fixed:S"),
    ("fixed:1:2", "expected fixed:S"),
    ("uniform:1", "expected fixed:S"),
    ("lognormal:1:2:3", "expected fixed:S"),
    ("exp:abc", "must be numbers"),
    ("uniform:0.1:", "must be numbers"),
    ("exp:-1", "non-negative"),
    ("fixed:nan", "finite"),
    ("fixed:inf", "finite"),
    ("uniform:2:1", "ordered"),
])
def test_bad_distributions_are_refused_with_what_they_should_look_like(text, message):
    with pytest.raises(ValueError, match=message) as caught:
        Distribution.parse(text)
    assert repr(text) in str(caught.value)


@pytest.mark.parametrize("text, mean, tolerance", [
    ("fixed:0.25", 0.25, 0.0),
    ("uniform:0.1:0.5", 0.3, 0.01),
    ("exp:0.3", 0.3, 0.015),
    # lognormal with median M and sigma S has mean M * exp(S^2 / 2)
    ("lognormal:0.2:0.5", 0.2 * math.exp(0.125), 0.01),
])
def test_distribution_means(text, mean, tolerance):
    dist = Distribution.parse(text)
    rng = random.Random(7)
    draws = [dist.draw(rng) for _ in range(DRAWS)]
    assert statistics.fmean(draws) == pytest.approx(mean, abs=tolerance)
    assert min(draws) >= 0


def test_uniform_stays_in_its_range_and_lognormal_has_its_median():
    rng = random.Random(3)
    uniform = [Distribution.parse("uniform:0.1:0.3").draw(rng) for _ in range(5000)]
    assert 0.1 <= min(uniform) and max(uniform) <= 0.3
    lognormal = [Distribution.parse("lognormal:0.2:0.8").draw(rng) for _ in range(DRAWS)]
    assert statistics.median(lognormal) == pytest.approx(0.2, rel=0.05)


@pytest.mark.parametrize("text", ["exp:0", "lognormal:0:1", "uniform:0:0", "fixed:0"])
def test_zero_think_time_draws_zero(text):
    rng = random.Random(1)
    assert {Distribution.parse(text).draw(rng) for _ in range(100)} == {0.0}


# -- mixes ---------------------------------------------------------------------------

def test_mix_parses_weights_think_and_biometric():
    mix = Mix.parse("approve=70, deny=10 ,ignore=10,fraud=10", "exp:0.3", 0.8)
    assert mix.weights == ((Action.APPROVE, 70.0), (Action.DENY, 10.0), (Action.IGNORE, 10.0), (Action.FRAUD, 10.0))
    assert mix.think == Distribution("exp", 0.3)
    assert mix.biometric == 0.8


def test_an_action_without_a_weight_weighs_one():
    assert Mix.parse("approve,deny").weights == ((Action.APPROVE, 1.0), (Action.DENY, 1.0))
    assert Mix.parse("deny=2,,").weights == ((Action.DENY, 2.0),)


@pytest.mark.parametrize("mix, kwargs, message", [
    ("approve=70,allow=30", {}, "unknown action 'allow'"),
    ("=5", {}, "unknown action"),
    ("approve=lots", {}, "weight of approve must be a number"),
    ("approve=-1", {}, "weight of approve must be non-negative"),
    ("approve=inf", {}, "weight of approve"),
    ("approve=nan", {}, "weight of approve"),
    ("", {}, "at least one action a positive weight"),
    (" , ", {}, "at least one action a positive weight"),
    ("approve=0,deny=0", {}, "at least one action a positive weight"),
    ("approve=1", {"biometric": 1.5}, "biometric must be a probability"),
    ("approve=1", {"biometric": -0.1}, "biometric must be a probability"),
    ("approve=1", {"think": "exp"}, "think time 'exp'"),
])
def test_bad_mixes_are_refused_clearly(mix, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Mix.parse(mix, **kwargs)


def test_unknown_action_message_lists_the_actions():
    with pytest.raises(ValueError) as caught:
        Mix.parse("accept=1")
    for action in Action:
        assert action.value in str(caught.value)


def test_seeded_draws_follow_the_weights():
    mix = Mix.parse("approve=60,deny=20,ignore=15,fraud=5", biometric=0.3)
    rng = random.Random(2024)
    draws = [mix.draw(rng) for _ in range(DRAWS)]
    actions = Counter(action for action, _, _ in draws)
    for action, share in ((Action.APPROVE, 0.6), (Action.DENY, 0.2), (Action.IGNORE, 0.15), (Action.FRAUD, 0.05)):
        assert within(actions[action], DRAWS, share), (action, actions)
    assert within(sum(bio for _, _, bio in draws), DRAWS, 0.3)


def test_a_zero_weight_action_is_never_drawn():
    mix = Mix.parse("approve=1,deny=0")
    rng = random.Random(5)
    assert {mix.draw(rng)[0] for _ in range(2000)} == {Action.APPROVE}


def test_biometric_extremes():
    rng = random.Random(9)
    always, never = Mix.parse("approve", biometric=1.0), Mix.parse("approve", biometric=0.0)
    assert all(always.draw(rng)[2] for _ in range(1000))
    assert not any(never.draw(rng)[2] for _ in range(1000))


def test_think_times_come_from_the_distribution():
    mix = Mix.parse("approve", "uniform:1:2")
    rng = random.Random(11)
    thinks = [mix.draw(rng)[1] for _ in range(2000)]
    assert 1 <= min(thinks) and max(thinks) <= 2
    assert statistics.fmean(thinks) == pytest.approx(1.5, abs=0.05)


def test_the_same_seed_gives_the_same_run():
    mix = Mix.parse("approve=50,deny=30,ignore=10,fraud=10", "exp:0.2", 0.5)
    assert _draws(mix, 42, 500) == _draws(mix, 42, 500)
    assert _draws(mix, 42, 500) != _draws(mix, 43, 500)


def _draws(mix: Mix, seed: int, n: int) -> list:
    rng = random.Random(seed)
    return [mix.draw(rng) for _ in range(n)]


def test_describe_gives_shares_think_and_biometric():
    mix = Mix.parse("approve=70,deny=10,ignore=10,fraud=10", "exp:0.3", 0.5)
    assert mix.describe() == "approve 70%, deny 10%, ignore 10%, fraud 10%; think exp:0.3; biometric 50%"
    assert Mix.parse("approve=3,deny=1,fraud=0").describe() == "approve 75%, deny 25%; think fixed:0; biometric 100%"


def test_each_action_has_the_status_the_backend_must_see():
    assert {a.value: a.expected_status for a in Action} == {
        "approve": "approved", "deny": "denied", "ignore": "expired", "fraud": "denied"}
