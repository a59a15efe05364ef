"""TOTP for backends: enrollment, confirmation, verification, reset, removal.

The rules (each one tested):
- a code is accepted for the current time step and `totp_drift_steps` either
  side of it;
- a step is accepted once: once used, it and every earlier step are refused
  (RFC 6238 section 5.2), which the store decides atomically and keeps across
  restarts;
- after `totp_max_failures` consecutive failures the user is locked out, for
  `totp_lockout_s`, doubling with every further failure up to
  `totp_lockout_max_s` (RFC 4226 section 7.3, NIST SP 800-63B-4 section
  3.2.2); a success resets the count, a new enrollment does not;
- every answer to a failed code has one shape and costs the same work (one
  store read, one unseal, the same HMACs, one store write), whether the code
  was wrong, replayed, or the user unknown or locked; why it failed is written
  only to the audit log.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any

from engine.clock import Clock
from engine.config import Config
from engine.enrollment import check_user_id
from engine.errors import RpcError, RpcErrorCode
from engine.events import EventPublisher
from engine.models import AuditEntry, TotpLockout, TotpRecord, TotpSecret
from engine.policy import PolicyService
from engine.store.base import Store
from engine.totp import codes
from engine.totp.codes import TotpAlgorithm, TotpParams, base32_secret, matching_step, otpauth_uri
from engine.totp.qr import terminal_qr
from engine.totp.sealing import SealingError, SecretSealer

log = logging.getLogger(__name__)

MAX_LABEL = 128
REJECTED = {"valid": False, "reason": "rejected"}
# Stands in for a missing secret so that an unknown user costs what a known one does.
_NOBODY = "\x00nobody"


@dataclass(frozen=True, slots=True)
class _Candidate:
    """The secret a code is checked against, real or stand-in."""

    secret: TotpSecret | None  # None: the stand-in
    plain: bytes
    params: TotpParams


class TotpService:
    def __init__(self, store: Store, sealer: SecretSealer, config: Config, policy: PolicyService,
                 events: EventPublisher, clock: Clock):
        self._store = store
        self._sealer = sealer
        self._config = config
        self._policy = policy
        self._events = events
        self._clock = clock
        self._stand_in = sealer.seal(codes.new_secret(TotpAlgorithm.SHA1), _NOBODY)

    # -- enrollment ----------------------------------------------------------
    async def begin_enrollment(self, user_id: Any, opts: Any = None) -> dict[str, Any]:
        """`totp.begin_enrollment`: a new secret, active once `totp.confirm` succeeds.

        Raises:
            RpcError: invalid_params; already_enrolled when the user has a
                confirmed secret (replace it with totp.reset, or an operator's
                totp.remove).
        """
        user_id = check_user_id(user_id)
        params, issuer, label = _parse_opts(opts, TotpParams(), self._config.totp_issuer, default_label(user_id))
        record = await self._store.totp.get(user_id)
        if record is not None and record.active is not None:
            raise RpcError(RpcErrorCode.ALREADY_ENROLLED)
        return await self._new_pending(user_id, params, issuer, label, "totp.enrollment_started")

    async def confirm(self, user_id: Any, code: Any) -> dict[str, Any]:
        """`totp.confirm`: the first current code from the new secret activates it
        (replacing the old one after a reset).

        Raises:
            RpcError: totp_rejected, whatever the reason (the audit log has it).
        """
        user_id = check_user_id(user_id)
        now = self._clock.now_ms()
        record = await self._store.totp.get(user_id)
        pending = record.pending if record is not None else None
        if pending is not None and pending.created_at + self._config.enrollment_ttl_s * 1000 <= now:
            pending, reason = None, "pending_expired"
        else:
            reason = "no_pending_secret"
        candidate = self._candidate(user_id, pending)
        step = matching_step(candidate.plain, candidate.params, _code(code), now / 1000,
                             self._policy.current.totp_drift_steps)
        if pending is not None:
            reason = self._refusal(record, pending, step, now) or ""
            if not reason:
                assert step is not None
                audit = AuditEntry(now, "totp.confirmed", user_id=user_id, detail=_describe(pending))
                if await self._store.totp.confirm(user_id, pending.secret_id, step, now, [audit]):
                    await self._events.emit("totp.confirmed", user_id=user_id, secret_id=pending.secret_id)
                    return {"confirmed": True}
                reason = "superseded"  # another begin or reset replaced it meanwhile
        await self._failed(user_id, reason, now, counted=record is not None and reason != "locked")
        raise RpcError(RpcErrorCode.TOTP_REJECTED)

    # -- verification --------------------------------------------------------
    async def verify(self, user_id: Any, code: Any) -> dict[str, Any]:
        """`totp.verify`: {valid: true}, or {valid: false, reason: "rejected"}."""
        user_id = check_user_id(user_id)
        return {"valid": True} if await self._use_active(user_id, code, "login") else dict(REJECTED)

    async def reset(self, user_id: Any, current_code: Any, opts: Any = None) -> dict[str, Any]:
        """`totp.reset` (the app's "Reset Authenticator App"): with a valid current
        code, a fresh secret; the old one keeps working until the new one is confirmed.

        Raises:
            RpcError: totp_rejected; invalid_params.
        """
        user_id = check_user_id(user_id)
        if opts is not None and not isinstance(opts, dict):
            raise RpcError(RpcErrorCode.INVALID_PARAMS, "opts must be a map")
        record = await self._store.totp.get(user_id)
        active = record.active if record is not None else None
        base = active.params if active is not None else TotpParams()
        params, issuer, label = _parse_opts(
            opts, base, active.issuer if active else self._config.totp_issuer,
            active.label if active else default_label(user_id))
        if not await self._use_active(user_id, current_code, "reset"):
            raise RpcError(RpcErrorCode.TOTP_REJECTED)
        return await self._new_pending(user_id, params, issuer, label, "totp.reset")

    async def remove(self, user_id: Any, by: str) -> dict[str, Any]:
        """`totp.remove` (operator): delete the user's secrets; the throttle stays."""
        user_id = check_user_id(user_id)
        audit = AuditEntry(self._clock.now_ms(), "totp.removed", user_id=user_id, detail={"by": by})
        removed = await self._store.totp.remove(user_id, [audit])
        if removed:
            await self._events.emit("totp.removed", user_id=user_id, by=by)
        return {"removed": removed}

    async def status(self, user_id: Any) -> dict[str, Any]:
        """`totp.status`: what the user has, and whether they are locked out."""
        user_id = check_user_id(user_id)
        now = self._clock.now_ms()
        record = await self._store.totp.get(user_id) or TotpRecord(user_id)
        active, pending = record.active, record.pending
        if pending is not None and pending.created_at + self._config.enrollment_ttl_s * 1000 <= now:
            pending = None
        locked = record.locked_until is not None and record.locked_until > now
        return {
            "user_id": user_id,
            "enrolled": active is not None or pending is not None,
            "confirmed": active is not None,
            "confirmed_at": active.confirmed_at if active else None,
            "pending": pending is not None,
            "locked_until": record.locked_until if locked else None,
            "failures": record.failures,
            "last_used_at": record.last_used_at,
            **({"digits": active.params.digits, "period": active.params.period,
                "algorithm": str(active.params.algorithm), "issuer": active.issuer, "label": active.label}
               if active else {}),
        }

    # -- the shared paths ------------------------------------------------------
    async def _use_active(self, user_id: str, code: Any, purpose: str) -> bool:
        """Check `code` against the user's active secret and spend its step
        (`purpose`, "login" or "reset", goes into the audit record).

        On failure, count it and audit why; the caller answers in one shape."""
        now = self._clock.now_ms()
        record = await self._store.totp.get(user_id)
        active = record.active if record is not None else None
        candidate = self._candidate(user_id, active)
        step = matching_step(candidate.plain, candidate.params, _code(code), now / 1000,
                             self._policy.current.totp_drift_steps)
        reason = "not_enrolled" if active is None else self._refusal(record, active, step, now)
        if reason is None:
            assert active is not None and step is not None
            audit = AuditEntry(now, "totp.verified", user_id=user_id,
                               detail={"secret_id": active.secret_id, "step": step, "purpose": purpose})
            if await self._store.totp.use_step(user_id, active.secret_id, step, now, [audit]):
                await self._events.emit("totp.verified", user_id=user_id, secret_id=active.secret_id,
                                        purpose=purpose)
                return True
            reason = "replayed"  # another request spent this step first
        await self._failed(user_id, reason, now, counted=record is not None and reason != "locked")
        return False

    def _candidate(self, user_id: str, secret: TotpSecret | None) -> _Candidate:
        if secret is not None:
            try:
                return _Candidate(secret, self._sealer.open(secret.sealed, user_id), secret.params)
            except SealingError:
                # Wrong key in the config, or a tampered row: refuse, loudly.
                log.error("the TOTP secret of user %r does not open with this node's totp key", user_id)
        return _Candidate(None, self._sealer.open(self._stand_in, _NOBODY), TotpParams())

    @staticmethod
    def _refusal(record: TotpRecord | None, secret: TotpSecret, step: int | None, now: int) -> str | None:
        """Why a code against a secret the user has is refused, or None if accepted."""
        if record is not None and record.locked_until is not None and record.locked_until > now:
            return "locked"
        if step is None:
            return "wrong_code"
        if step <= secret.last_step:
            return "replayed"
        return None

    async def _failed(self, user_id: str, reason: str, now: int, *, counted: bool) -> None:
        """One write whatever the reason: the failure count for a user we know,
        else just the audit record."""
        audit = AuditEntry(now, "totp.failed", user_id=user_id, detail={"reason": reason})
        until = None
        if counted:
            policy = self._policy.current
            lockout = TotpLockout(policy.totp_max_failures, policy.totp_lockout_s * 1000,
                                  policy.totp_lockout_max_s * 1000)
            failures, until = await self._store.totp.record_failure(user_id, now, lockout, [audit])
        else:
            failures = None
            await self._store.append_audit([audit])
        # No reason in the event: subscribers include backends, and the reason is
        # for the audit log (operators) only.
        await self._events.emit("totp.failed", user_id=user_id)
        if until is not None:
            log.info("TOTP locked for user %r until %d after %d failures", user_id, until, failures)
            await self._events.emit("totp.locked", user_id=user_id, until=until, failures=failures)

    async def _new_pending(self, user_id: str, params: TotpParams, issuer: str, label: str,
                           kind: str) -> dict[str, Any]:
        now = self._clock.now_ms()
        plain = codes.new_secret(params.algorithm)
        secret = TotpSecret(secret_id="totp_" + secrets.token_urlsafe(12),
                            sealed=self._sealer.seal(plain, user_id), params=params, issuer=issuer,
                            label=label, created_at=now)
        audit = AuditEntry(now, kind, user_id=user_id, detail=_describe(secret))
        await self._store.totp.put_pending(user_id, secret, [audit])
        await self._events.emit(kind, user_id=user_id, secret_id=secret.secret_id)
        uri = otpauth_uri(plain, params, issuer=issuer, label=label)
        return {"secret": base32_secret(plain), "otpauth_uri": uri, "qr": terminal_qr(uri),
                "digits": params.digits, "period": params.period, "algorithm": str(params.algorithm),
                "confirm_by": now + self._config.enrollment_ttl_s * 1000}


def default_label(user_id: str) -> str:
    """The account name apps show when the backend gives none: the user id, made
    fit for an otpauth label (no ':', which separates the issuer; at most MAX_LABEL)."""
    return user_id.replace(":", "_")[:MAX_LABEL]


def _describe(secret: TotpSecret) -> dict[str, Any]:
    """What the audit log says about a secret: never the secret."""
    return {"secret_id": secret.secret_id, "digits": secret.params.digits, "period": secret.params.period,
            "algorithm": str(secret.params.algorithm), "issuer": secret.issuer, "label": secret.label}


def _code(code: Any) -> str:
    if not isinstance(code, str):
        raise RpcError(RpcErrorCode.INVALID_PARAMS, "code must be a string")
    return code


def _parse_opts(opts: Any, base: TotpParams, issuer: str, label: str) -> tuple[TotpParams, str, str]:
    if opts is None:
        opts = {}
    if not isinstance(opts, dict):
        raise RpcError(RpcErrorCode.INVALID_PARAMS, "opts must be a map")
    unknown = set(opts) - {"issuer", "label", "digits", "period", "algorithm"}
    if unknown:
        raise RpcError(RpcErrorCode.INVALID_PARAMS, f"unknown opts {sorted(map(str, unknown))}")
    issuer = opts.get("issuer", issuer)
    label = opts.get("label", label)
    for name, value in (("issuer", issuer), ("label", label)):
        if not isinstance(value, str) or not 1 <= len(value) <= MAX_LABEL or ":" in value:
            raise RpcError(RpcErrorCode.INVALID_PARAMS, f"{name} must be 1 to {MAX_LABEL} characters, no ':'")
    algorithm = opts.get("algorithm", str(base.algorithm))
    if not isinstance(algorithm, str) or algorithm.upper() not in TotpAlgorithm.__members__:
        raise RpcError(RpcErrorCode.INVALID_PARAMS, f"algorithm must be one of {list(TotpAlgorithm.__members__)}")
    try:
        params = TotpParams(digits=opts.get("digits", base.digits), period=opts.get("period", base.period),
                            algorithm=TotpAlgorithm(algorithm.upper()))
    except (TypeError, ValueError) as exc:
        raise RpcError(RpcErrorCode.INVALID_PARAMS, str(exc)) from None
    return params, issuer, label
