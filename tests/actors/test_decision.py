"""The rules that turn a phone's signed answer into a decision, and their order.

`judge` is pure: each test builds a Challenge record and the claims of a
respond token, and checks the verdict the phone and the store would see.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from actors.decision import Verdict, judge
from engine.errors import DeviceErrorCode
from engine.models import Challenge, ChallengeStatus, MatchMode, ResourceKind

NOW = 1_700_000_000_000
CTX = "c2hhMjU2LW9mLXRoZS1jb250ZXh0"


def challenge(**changes: Any) -> Challenge:
    """A pending challenge created a second ago, open for another 59 s."""
    base = Challenge(
        challenge_id="ch-1",
        user_id="ada",
        device_id="phone-1",
        resource_kind=ResourceKind.LOGIN,
        resource_name="vpn",
        context={"app": "VPN", "ip": "192.0.2.7"},
        created_at=NOW - 1_000,
        expires_at=NOW + 59_000,
        context_hash=CTX,
    )
    return dataclasses.replace(base, **changes)


def claims(**changes: Any) -> dict[str, Any]:
    """A well-formed approval of `challenge()`; a claim given as `...` is left out."""
    base: dict[str, Any] = {"sub": "phone-1", "challenge_id": "ch-1", "decision": "approve",
                            "ctx": CTX, "jti": "j-1", "iat": NOW // 1000}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


def refusal(error: DeviceErrorCode) -> Verdict:
    return Verdict(None, error)


# --- a finished challenge ---------------------------------------------------


@pytest.mark.parametrize("decision", ["approve", "deny"])
def test_an_expired_challenge_answers_expired(decision: str) -> None:
    verdict = judge(challenge(status=ChallengeStatus.EXPIRED), claims(decision=decision), NOW)

    assert verdict == refusal(DeviceErrorCode.EXPIRED)
    assert not verdict.decides


@pytest.mark.parametrize("status", [ChallengeStatus.APPROVED, ChallengeStatus.DENIED,
                                    ChallengeStatus.CANCELLED])
@pytest.mark.parametrize("decision", ["approve", "deny"])
def test_a_decided_challenge_answers_already_decided(
    status: ChallengeStatus, decision: str
) -> None:
    verdict = judge(challenge(status=status), claims(decision=decision), NOW)

    assert verdict == refusal(DeviceErrorCode.ALREADY_DECIDED)
    assert not verdict.decides


def test_a_decided_challenge_past_its_expiry_still_answers_already_decided() -> None:
    late = NOW + 120_000

    verdict = judge(challenge(status=ChallengeStatus.APPROVED), claims(), late)

    assert verdict == refusal(DeviceErrorCode.ALREADY_DECIDED)


def test_a_final_status_wins_over_malformed_claims() -> None:
    verdict = judge(challenge(status=ChallengeStatus.DENIED), claims(decision="maybe"), NOW)

    assert verdict == refusal(DeviceErrorCode.ALREADY_DECIDED)


@pytest.mark.parametrize("now", [NOW + 59_000, NOW + 59_001, NOW + 3_600_000])
def test_a_pending_challenge_past_its_expiry_answers_expired(now: int) -> None:
    assert judge(challenge(), claims(), now) == refusal(DeviceErrorCode.EXPIRED)


@pytest.mark.parametrize("answer", [{"fraud": True}, {"decision": "deny"}, {"decision": "maybe"}])
def test_nothing_decides_a_pending_challenge_past_its_expiry(answer: dict[str, Any]) -> None:
    verdict = judge(challenge(), claims(**answer), NOW + 59_000)

    assert verdict == refusal(DeviceErrorCode.EXPIRED)


def test_an_answer_just_before_the_expiry_counts() -> None:
    verdict = judge(challenge(), claims(), NOW + 58_999)

    assert verdict.status is ChallengeStatus.APPROVED


# --- malformed claims -------------------------------------------------------


@pytest.mark.parametrize("bad", [
    {"decision": ...},
    {"decision": "maybe"},
    {"decision": "APPROVE"},
    {"decision": True},
    {"decision": None},
    {"biometric": "yes"},
    {"biometric": 1},
    {"biometric": None},
    {"fraud": "true"},
    {"fraud": 1},
    {"fraud": None},
    {"decision": "deny", "fraud": 1},
])
def test_claims_of_the_wrong_type_answer_bad_signature(bad: dict[str, Any]) -> None:
    verdict = judge(challenge(), claims(**bad), NOW)

    assert verdict == refusal(DeviceErrorCode.BAD_SIGNATURE)
    assert not verdict.decides


def test_a_mistyped_fraud_flag_does_not_deny() -> None:
    verdict = judge(challenge(), claims(decision="approve", fraud="yes"), NOW)

    assert verdict == refusal(DeviceErrorCode.BAD_SIGNATURE)


# --- fraud and deny always end the challenge --------------------------------


@pytest.mark.parametrize("decision", ["approve", "deny"])
def test_a_fraud_report_denies_whatever_the_decision(decision: str) -> None:
    verdict = judge(challenge(), claims(decision=decision, fraud=True, biometric=True), NOW)

    assert verdict == Verdict(ChallengeStatus.DENIED, reason="fraud", biometric=True, fraud=True)
    assert verdict.decides


def test_a_fraud_report_denies_even_with_the_wrong_context_and_number() -> None:
    strict = challenge(match=MatchMode.TYPE, match_code="42", require_biometric=True)

    verdict = judge(strict, claims(fraud=True, ctx="other", code="17"), NOW)

    assert verdict.status is ChallengeStatus.DENIED
    assert verdict.fraud is True
    assert verdict.reason == "fraud"
    assert verdict.error is None


def test_a_denial_denies() -> None:
    verdict = judge(challenge(), claims(decision="deny"), NOW)

    assert verdict == Verdict(ChallengeStatus.DENIED, reason="user", biometric=False)
    assert verdict.fraud is False


def test_a_denial_needs_no_context_number_or_biometric() -> None:
    strict = challenge(match=MatchMode.CHOOSE, match_code="42", choices=("17", "42", "88"),
                       require_biometric=True)

    verdict = judge(strict, claims(decision="deny", ctx=..., code="17"), NOW)

    assert verdict.status is ChallengeStatus.DENIED
    assert verdict.reason == "user"
    assert verdict.error is None


# --- an approval must show the context, the number and the biometric --------


@pytest.mark.parametrize("ctx", ["other-hash", CTX + "x", "", ..., None, 12345])
def test_an_approval_with_the_wrong_context_is_refused(ctx: Any) -> None:
    verdict = judge(challenge(), claims(ctx=ctx), NOW)

    assert verdict == refusal(DeviceErrorCode.CONTEXT_MISMATCH)
    assert not verdict.decides  # the challenge stays open


def test_the_context_is_checked_before_the_number() -> None:
    typed = challenge(match=MatchMode.TYPE, match_code="42")

    verdict = judge(typed, claims(ctx="other", code="17"), NOW)

    assert verdict == refusal(DeviceErrorCode.CONTEXT_MISMATCH)


@pytest.mark.parametrize("mode", [MatchMode.TYPE, MatchMode.CHOOSE])
@pytest.mark.parametrize("code", ["17", "421", "4", "", ..., None, 17])
def test_a_wrong_number_denies_and_answers_match_failed(mode: MatchMode, code: Any) -> None:
    matched = challenge(match=mode, match_code="42", choices=("17", "42", "88"))

    verdict = judge(matched, claims(code=code), NOW)

    assert verdict == Verdict(ChallengeStatus.DENIED, DeviceErrorCode.MATCH_FAILED, "match_failed",
                              biometric=False)
    assert verdict.decides


@pytest.mark.parametrize("code", ["42", 42])
def test_the_right_number_approves(code: Any) -> None:
    typed = challenge(match=MatchMode.TYPE, match_code="42")

    verdict = judge(typed, claims(code=code), NOW)

    assert verdict.status is ChallengeStatus.APPROVED
    assert verdict.error is None


def test_without_number_matching_the_code_is_ignored() -> None:
    verdict = judge(challenge(match=MatchMode.NONE), claims(code="anything"), NOW)

    assert verdict.status is ChallengeStatus.APPROVED


def test_the_number_is_checked_before_the_biometric() -> None:
    strict = challenge(match=MatchMode.TYPE, match_code="42", require_biometric=True)

    verdict = judge(strict, claims(code="17", biometric=False), NOW)

    assert verdict.status is ChallengeStatus.DENIED
    assert verdict.error is DeviceErrorCode.MATCH_FAILED


@pytest.mark.parametrize("biometric", [False, ...])
def test_an_approval_without_a_required_biometric_is_refused(biometric: Any) -> None:
    verdict = judge(challenge(require_biometric=True), claims(biometric=biometric), NOW)

    assert verdict == refusal(DeviceErrorCode.BIOMETRIC_REQUIRED)
    assert not verdict.decides  # the challenge stays open for a proper answer


def test_an_approval_with_a_required_biometric_approves() -> None:
    strict = challenge(match=MatchMode.TYPE, match_code="42", require_biometric=True)

    verdict = judge(strict, claims(code="42", biometric=True), NOW)

    assert verdict == Verdict(ChallengeStatus.APPROVED, reason="user", biometric=True)


@pytest.mark.parametrize("biometric", [True, False])
def test_a_good_approval_approves_and_records_the_biometric(biometric: bool) -> None:
    verdict = judge(challenge(), claims(biometric=biometric), NOW)

    assert verdict == Verdict(ChallengeStatus.APPROVED, reason="user", biometric=biometric)
    assert verdict.decides
    assert verdict.fraud is False


def test_an_approval_without_a_biometric_claim_records_none_taken() -> None:
    verdict = judge(challenge(), claims(biometric=...), NOW)

    assert verdict == Verdict(ChallengeStatus.APPROVED, reason="user", biometric=False)
