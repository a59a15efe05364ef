"""The durable store: what must survive a crash or restart.

Users, push devices, hashed enrollment codes, challenges with their decisions
and delivery times, policy, and the append-only audit log. SQLite serves one
machine (engine/store/sqlite.py); PostgreSQL will serve a cluster. Every
implementation passes tests/engine/store/conformance.py unchanged.

Each mutating call takes the audit entries that describe it and commits them
in the same transaction, so that a state change and its audit record are both
kept or both lost. A call returns only after its transaction is durable. Calls
that act on a device or a challenge attribute their audit entries to its user
and device where the caller left those empty, so `query_audit(user_id=...)`
finds every record about a user.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from engine.models import (
    AuditEntry,
    AuditRecord,
    Challenge,
    Decision,
    Device,
    Enrollment,
    TotpLockout,
    TotpRecord,
    TotpSecret,
)


class EnrollmentRejected(Exception):
    """The enrollment code is unknown, already used or expired."""


class TotpStore(Protocol):
    """Users' TOTP secrets (sealed) and their throttle.

    The checks that must not race, "a time step is accepted once" and "the
    failure count goes up by one", are made inside each call, so two nodes
    verifying the same code at once accept it at most once.
    """

    async def get(self, user_id: str) -> TotpRecord | None:
        """The user's secrets and throttle, or None if the user has neither."""

    async def put_pending(self, user_id: str, secret: TotpSecret, audit: Sequence[AuditEntry] = ()) -> None:
        """Keep `secret` as the user's pending secret, replacing any earlier pending one."""

    async def confirm(
        self, user_id: str, secret_id: str, step: int, now_ms: int, audit: Sequence[AuditEntry] = ()
    ) -> bool:
        """If `secret_id` is still the user's pending secret: make it the active
        one (the old active secret is deleted), with `step` spent, and reset the
        failure count and lockout. False, writing nothing, otherwise."""

    async def use_step(
        self, user_id: str, secret_id: str, step: int, now_ms: int, audit: Sequence[AuditEntry] = ()
    ) -> bool:
        """If `secret_id` is the user's active secret and `step` is later than its
        last spent step: spend it, set last_used_at, reset the failure count and
        lockout. False, writing nothing, otherwise (a replay, or a race lost)."""

    async def record_failure(
        self, user_id: str, now_ms: int, lockout: TotpLockout, audit: Sequence[AuditEntry] = ()
    ) -> tuple[int, int | None]:
        """Count one consecutive failure. When the new count reaches the lockout,
        lock the user until now + `lockout.lock_ms(count)` and append a
        `totp.locked` audit record in the same transaction. Returns the count and
        the new lock's end (None when this failure did not lock)."""

    async def remove(self, user_id: str, audit: Sequence[AuditEntry] = ()) -> bool:
        """Delete the user's secrets (the throttle stays). True if there were any."""


class Store(Protocol):
    totp: TotpStore

    # -- enrollments -------------------------------------------------------
    async def create_enrollment(
        self, enrollment: Enrollment, code_hash: bytes, audit: Sequence[AuditEntry] = ()
    ) -> None:
        """Store a pending enrollment; only the hash of its one-time code is kept."""

    async def get_enrollment(self, enrollment_id: str, now_ms: int) -> Enrollment | None:
        """The enrollment, with status `expired` if pending past its expiry."""

    async def complete_enrollment(
        self, code_hash: bytes, device: Device, now_ms: int, audit: Sequence[AuditEntry] = ()
    ) -> tuple[Enrollment, Device | None]:
        """Atomically: check the code (pending, not expired), mark it completed,
        revoke the user's current device if any, insert `device` (its user_id
        is replaced by the enrollment's user). Returns the completed enrollment
        and the device that was revoked, or None.

        Raises:
            EnrollmentRejected: the code is unknown, used or expired.
        """

    # -- devices -----------------------------------------------------------
    async def get_device(self, device_id: str) -> Device | None:
        """The device, revoked or not."""

    async def active_device_for_user(self, user_id: str) -> Device | None:
        """The user's one device that is not revoked, or None."""

    async def revoke_device(
        self, device_id: str, now_ms: int, audit: Sequence[AuditEntry] = ()
    ) -> Device | None:
        """Revoke the device if it is active; returns it as revoked, or None if
        it was unknown or already revoked (the audit entries are then not written)."""

    async def update_push_token(self, device_id: str, push_token: str | None) -> None: ...

    async def touch_device(self, device_id: str, last_seen_ms: int) -> None:
        """Record when the device was last connected."""

    # -- challenges --------------------------------------------------------
    async def create_challenge(self, challenge: Challenge, audit: Sequence[AuditEntry] = ()) -> None: ...

    async def get_challenge(self, challenge_id: str) -> Challenge | None: ...

    async def decide_challenge(
        self, challenge_id: str, decision: Decision, audit: Sequence[AuditEntry] = ()
    ) -> Challenge | None:
        """The linearisation point of "the first valid decision wins": set the
        decision only if the challenge is still pending. Returns the decided
        challenge if this call decided it, else None (and writes no audit)."""

    async def record_delivery(
        self,
        challenge_id: str,
        *,
        channel: str | None = None,
        sent_at: int | None = None,
        delivered_at: int | None = None,
        shown_at: int | None = None,
    ) -> None:
        """Set each given delivery field that is still empty: the first time wins."""

    def record_delivery_soon(
        self,
        challenge_id: str,
        *,
        channel: str | None = None,
        sent_at: int | None = None,
        delivered_at: int | None = None,
        shown_at: int | None = None,
    ) -> None:
        """`record_delivery` without waiting: the update is queued behind the
        writes already queued and is durable once any later awaited write
        returns. For the per-message path, where delivery times inform but
        decide nothing.

        Raises:
            trio.ClosedResourceError: the store is closed.
            trio.WouldBlock: the write queue is full; use `record_delivery`.
        """

    async def open_challenges_for_device(self, device_id: str, now_ms: int) -> list[Challenge]:
        """Pending challenges of the device whose expiry is after now, oldest first
        (in the order they were created, even within one millisecond)."""

    async def pending_challenges(self) -> list[Challenge]:
        """Every pending challenge, expired or not (a restarted node re-arms their expiry)."""

    # -- policy ------------------------------------------------------------
    async def load_policy(self) -> dict[str, Any]:
        """Operator changes to the policy, key by key ({} when none)."""

    async def save_policy(self, changes: dict[str, Any], audit: Sequence[AuditEntry] = ()) -> None:
        """Merge changes into the stored policy."""

    # -- audit -------------------------------------------------------------
    async def append_audit(self, entries: Sequence[AuditEntry]) -> None: ...

    async def query_audit(
        self,
        *,
        user_id: str | None = None,
        device_id: str | None = None,
        challenge_id: str | None = None,
        kind: str | None = None,
        since_ms: int | None = None,
        after_seq: int | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """Matching records in sequence order. `kind` matches exactly, or a
        prefix when it ends with '.' ("challenge." matches "challenge.decided")."""
