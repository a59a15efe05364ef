"""The push-bombing guard: who may be sent another push, and who is suspended.

The seed's rule: at most `max_open_per_resource` open challenges per user and
resource. Beyond the seed: a per-user hourly budget across resources, and a
suspension after `deny_streak_suspend` consecutive failures (denials and
wrong numbers) or any fraud report. Failure counts live in shared state and
carry across challenges and resources. Every block and suspension is an
event and an audit record.
"""

from __future__ import annotations

import logging

from engine.clock import Clock
from engine.errors import RpcError, RpcErrorCode
from engine.events import EventPublisher
from engine.models import AuditEntry, Challenge, ChallengeStatus
from engine.policy import PolicyService
from engine.stats import NodeStats
from engine.state.base import GuardState
from engine.store.base import Store

log = logging.getLogger(__name__)


class PushBombGuard:
    def __init__(
        self,
        state: GuardState,
        policy: PolicyService,
        store: Store,
        events: EventPublisher,
        stats: NodeStats,
        clock: Clock,
    ):
        self._state = state
        self._policy = policy
        self._store = store
        self._events = events
        self._stats = stats
        self._clock = clock

    async def admit(self, user_id: str, resource_key: str, challenge_id: str, expires_at: int) -> None:
        """Let the challenge through or raise the error the backend sees.

        Raises:
            RpcError: push_suspended (details: until, reason) or push_limited
                (details: retry_after_s, reason, open_challenge_id).
        """
        now = self._clock.now_ms()
        suspension = await self._state.suspension(user_id, now)
        if suspension is not None:
            await self._record_block(user_id, "suspended", {"until": suspension.until_ms})
            raise RpcError(
                RpcErrorCode.PUSH_SUSPENDED,
                details={"until": suspension.until_ms, "reason": suspension.reason},
            )
        policy = self._policy.current
        admission = await self._state.admit(
            user_id,
            resource_key,
            challenge_id,
            max_open=policy.max_open_per_resource,
            max_per_hour=policy.max_per_user_per_hour,
            expires_at_ms=expires_at,
            now_ms=now,
        )
        if admission.admitted:
            return
        retry_after_s = max(1, -(-admission.retry_after_ms // 1000))
        details = {"retry_after_s": retry_after_s, "reason": admission.reason,
                   "open_challenge_id": admission.open_challenge_id}
        await self._record_block(user_id, admission.reason or "limited", {
            "resource": resource_key, "retry_after_s": retry_after_s,
            "open_challenge_id": admission.open_challenge_id})
        raise RpcError(RpcErrorCode.PUSH_LIMITED, details=details)

    async def release(self, challenge: Challenge) -> None:
        await self._state.release(challenge.user_id, challenge.resource_key, challenge.challenge_id)

    async def after_decision(self, challenge: Challenge) -> None:
        """Update the failure streak; suspend on a fraud report or a long streak."""
        if challenge.status is ChallengeStatus.APPROVED:
            await self._state.reset_failures(challenge.user_id)
            return
        if challenge.status is not ChallengeStatus.DENIED:
            return  # expiry and cancellation are not the user's answer
        if challenge.fraud:
            self._stats.incr("fraud_reports")
            await self._events.emit("fraud.reported", user_id=challenge.user_id,
                                    device_id=challenge.device_id, challenge_id=challenge.challenge_id)
            await self.suspend(challenge.user_id, "fraud", challenge.challenge_id)
            return
        streak = await self._state.record_failure(challenge.user_id)
        if streak >= self._policy.current.deny_streak_suspend:
            await self.suspend(challenge.user_id, "deny_streak", challenge.challenge_id, streak=streak)

    async def suspend(self, user_id: str, reason: str, challenge_id: str | None = None, **detail: object) -> int:
        now = self._clock.now_ms()
        until = now + self._policy.current.suspend_minutes * 60_000
        await self._state.suspend(user_id, until, reason)
        self._stats.incr("suspensions")
        await self._store.append_audit([AuditEntry(now, "guard.suspended", user_id=user_id,
                                                   challenge_id=challenge_id,
                                                   detail={"reason": reason, "until": until, **detail})])
        await self._events.emit("guard.suspended", user_id=user_id, challenge_id=challenge_id,
                                reason=reason, until=until)
        log.info("push suspended for user %s until %d (%s)", user_id, until, reason)
        return until

    async def clear(self, user_id: str, by: str) -> bool:
        """An operator lifts the user's suspension and failure streak."""
        now = self._clock.now_ms()
        cleared = await self._state.clear_suspension(user_id, now)
        await self._store.append_audit([AuditEntry(now, "guard.cleared", user_id=user_id,
                                                   detail={"by": by, "was_suspended": cleared})])
        await self._events.emit("guard.cleared", user_id=user_id, by=by, was_suspended=cleared)
        return cleared

    async def status(self, user_id: str) -> dict[str, object] | None:
        suspension = await self._state.suspension(user_id, self._clock.now_ms())
        if suspension is None:
            return None
        return {"until": suspension.until_ms, "reason": suspension.reason}

    async def _record_block(self, user_id: str, reason: str, detail: dict[str, object]) -> None:
        self._stats.incr("limiter_blocks")
        now = self._clock.now_ms()
        await self._store.append_audit([AuditEntry(now, "guard.blocked", user_id=user_id,
                                                   detail={"reason": reason, **detail})])
        await self._events.emit("guard.blocked", user_id=user_id, reason=reason, **detail)
