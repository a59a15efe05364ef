"""The rules that turn a phone's signed answer into a decision (pure, no I/O).

Order matters and is part of the contract: a finished challenge answers
expired/already_decided; fraud and deny always end it; an approval must show
the right context, the right number and, when required, biometrics.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from engine.errors import DeviceErrorCode
from engine.models import Challenge, ChallengeStatus, MatchMode


@dataclass(frozen=True, slots=True)
class Verdict:
    """Either a decision to commit (`status` set) or a refusal (`status` None).

    `error` is what the phone is told instead of `result`; a decision may carry
    one too (a wrong number denies the challenge and answers match_failed).
    """

    status: ChallengeStatus | None
    error: DeviceErrorCode | None = None
    reason: str = "user"
    biometric: bool | None = None
    fraud: bool = False

    @property
    def decides(self) -> bool:
        return self.status is not None


def judge(challenge: Challenge, claims: dict[str, Any], now_ms: int) -> Verdict:
    if challenge.status is ChallengeStatus.EXPIRED:
        return Verdict(None, DeviceErrorCode.EXPIRED)
    if challenge.status.is_final:
        return Verdict(None, DeviceErrorCode.ALREADY_DECIDED)
    if now_ms >= challenge.expires_at:
        return Verdict(None, DeviceErrorCode.EXPIRED)
    decision = claims.get("decision")
    biometric = claims.get("biometric", False)
    fraud = claims.get("fraud", False)
    if decision not in ("approve", "deny") or not isinstance(biometric, bool) or not isinstance(fraud, bool):
        return Verdict(None, DeviceErrorCode.BAD_SIGNATURE)
    if fraud:
        return Verdict(ChallengeStatus.DENIED, reason="fraud", biometric=biometric, fraud=True)
    if decision == "deny":
        return Verdict(ChallengeStatus.DENIED, reason="user", biometric=biometric)
    if not _same(claims.get("ctx"), challenge.context_hash):
        return Verdict(None, DeviceErrorCode.CONTEXT_MISMATCH)
    if challenge.match is not MatchMode.NONE and not _same(claims.get("code"), challenge.match_code):
        return Verdict(ChallengeStatus.DENIED, DeviceErrorCode.MATCH_FAILED, "match_failed", biometric)
    if challenge.require_biometric and biometric is not True:
        return Verdict(None, DeviceErrorCode.BIOMETRIC_REQUIRED)
    return Verdict(ChallengeStatus.APPROVED, reason="user", biometric=biometric)


def _same(given: Any, expected: str | None) -> bool:
    if isinstance(given, int) and not isinstance(given, bool):
        given = str(given)
    if not isinstance(given, str) or expected is None:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())
