"""Domain records shared by the store, the actors and the servers.

All are frozen, slotted dataclasses; a change makes a new record
(`dataclasses.replace`). Times are wall-clock milliseconds since the epoch.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from engine.totp.codes import TotpParams


class Platform(enum.StrEnum):
    IOS = "ios"
    ANDROID = "android"
    WEB = "web"
    SIM = "sim"


class ResourceKind(enum.StrEnum):
    LOGIN = "login"
    STEP_UP = "step_up"
    PASSWORD_RESET = "password_reset"
    DEVICE_LOGIN = "device_login"


class MatchMode(enum.StrEnum):
    NONE = "none"
    CHOOSE = "choose"  # the phone shows three numbers, one is the login screen's
    TYPE = "type"  # the user types the number the login screen shows


class ChallengeStatus(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self is not ChallengeStatus.PENDING


class EnrollmentStatus(enum.StrEnum):
    PENDING = "pending"
    COMPLETED = "completed"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Device:
    """One enrolled phone. A user has at most one device that is not revoked."""

    device_id: str
    user_id: str
    public_key: bytes  # raw Ed25519 public key, 32 bytes
    platform: Platform
    enrolled_at: int
    push_token: str | None = None
    device_name: str | None = None
    app_version: str | None = None
    revoked_at: int | None = None
    last_seen: int | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class Enrollment:
    """A push enrollment started by a backend; the phone completes it with the code."""

    enrollment_id: str
    user_id: str
    created_at: int
    expires_at: int
    status: EnrollmentStatus = EnrollmentStatus.PENDING
    device_id: str | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """How and when a challenge reached the phone."""

    channel: str | None = None  # "websocket", or a push provider's name
    sent_at: int | None = None
    delivered_at: int | None = None  # the phone's ack
    shown_at: int | None = None  # the phone's ack with shown=true


@dataclass(frozen=True, slots=True)
class Challenge:
    """One push challenge: a request to the user's phone to approve or deny."""

    challenge_id: str
    user_id: str
    device_id: str
    resource_kind: ResourceKind
    resource_name: str
    context: dict[str, Any]  # app, ip, location, user_agent
    created_at: int
    expires_at: int
    context_hash: str
    require_biometric: bool = False
    match: MatchMode = MatchMode.NONE
    match_code: str | None = None  # what the login screen shows
    choices: tuple[str, ...] | None = None  # for MatchMode.CHOOSE
    status: ChallengeStatus = ChallengeStatus.PENDING
    decided_at: int | None = None
    biometric: bool | None = None
    fraud: bool = False
    reason: str | None = None  # why it ended: user, match_failed, timeout, cancelled, revoked
    delivery: Delivery = field(default_factory=Delivery)

    @property
    def resource_key(self) -> str:
        """The push-bombing guard counts open challenges per user and this key."""
        return f"{self.resource_kind}:{self.resource_name}"


@dataclass(frozen=True, slots=True)
class Decision:
    """The end of a challenge. The first one committed to the store wins."""

    status: ChallengeStatus
    decided_at: int
    reason: str
    biometric: bool | None = None
    fraud: bool = False


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One line of the append-only audit log, before the store numbers it."""

    at: int
    kind: str  # e.g. "enrollment.completed", "challenge.decided", "guard.blocked"
    user_id: str | None = None
    device_id: str | None = None
    challenge_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """An audit entry as stored, with its sequence number."""

    seq: int
    at: int
    kind: str
    user_id: str | None
    device_id: str | None
    challenge_id: str | None
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TotpSecret:
    """One TOTP secret of a user, sealed (engine/totp/sealing.py); never the plain secret."""

    secret_id: str
    sealed: bytes
    params: TotpParams
    issuer: str
    label: str
    created_at: int
    confirmed_at: int | None = None  # None while it waits for totp.confirm
    last_step: int = -1  # the last time step accepted: it and every earlier one are spent


@dataclass(frozen=True, slots=True)
class TotpRecord:
    """A user's TOTP state: the confirmed secret, the one waiting to replace it,
    and the throttle, which outlives both (a new enrollment never resets it)."""

    user_id: str
    active: TotpSecret | None = None
    pending: TotpSecret | None = None
    failures: int = 0  # consecutive failed codes
    locked_until: int | None = None
    last_used_at: int | None = None


@dataclass(frozen=True, slots=True)
class TotpLockout:
    """When consecutive failures lock a user out: `base_ms` at `max_failures`,
    doubling with every further failure, up to `cap_ms`."""

    max_failures: int
    base_ms: int
    cap_ms: int

    def lock_ms(self, failures: int) -> int:
        if failures < self.max_failures:
            return 0
        doublings = min(failures - self.max_failures, 32)
        return min(self.base_ms << doublings, self.cap_ms)
