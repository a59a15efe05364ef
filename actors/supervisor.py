"""The challenge supervisor: a challenge's life from create to its one decision.

It enforces the push-bombing guard at creation, arms the expiry timer,
routes the challenge to its device's actor, judges the phone's signed answer,
commits the first valid decision to the durable store before anyone hears of
it, and then tells the waiters (through the event bus), the guard (streaks,
suspensions) and the phone (`closed`).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from actors.decision import judge
from actors.guard import PushBombGuard
from actors.messages import ActorMessage, Deliver, Ended
from engine.clock import Clock
from engine.errors import DeviceError, DeviceErrorCode, RpcError, RpcErrorCode
from engine.events import EventPublisher, challenge_topic
from engine.models import (
    AuditEntry,
    Challenge,
    ChallengeStatus,
    Decision,
    Device,
    MatchMode,
    ResourceKind,
)
from engine.policy import PolicyService
from engine.protocol.context_hash import CONTEXT_FIELDS, context_hash
from engine.protocol.device import Context, Resource
from engine.stats import NodeStats
from engine.state.base import EventBus
from engine.store.base import Store

from actors.expiry import ExpiryTimer

log = logging.getLogger(__name__)

MAX_WAIT_S = 300.0
MAX_CONTEXT_VALUE = 256
MAX_RESOURCE_NAME = 256


class DeviceMailboxes(Protocol):
    def tell(self, device_id: str, message: ActorMessage) -> bool: ...


@dataclass(frozen=True, slots=True)
class RespondOutcome:
    status: ChallengeStatus | None = None  # the decision, when this answer made one
    error: DeviceErrorCode | None = None
    ended: Challenge | None = None  # the challenge, if this answer ended it


class ChallengeSupervisor:
    def __init__(
        self,
        store: Store,
        bus: EventBus,
        guard: PushBombGuard,
        policy: PolicyService,
        mailboxes: DeviceMailboxes,
        events: EventPublisher,
        stats: NodeStats,
        clock: Clock,
    ):
        self._store = store
        self._bus = bus
        self._guard = guard
        self._policy = policy
        self._mailboxes = mailboxes
        self._events = events
        self._stats = stats
        self._clock = clock
        self.expiry = ExpiryTimer(self.expire)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Re-arm the expiry of every pending challenge (after a restart), then
        run the expiry timer until cancelled."""
        for challenge in await self._store.pending_challenges():
            self.expiry.schedule(challenge.challenge_id, self._clock.trio_deadline(challenge.expires_at))
        await self.expiry.run(task_status=task_status)

    # -- create --------------------------------------------------------------
    async def create(
        self, user_id: str, resource: Any, context: Any, opts: Any
    ) -> dict[str, Any]:
        """`challenge.create`: validate, guard, persist, deliver.

        Raises:
            RpcError: invalid_params, not_enrolled, push_suspended, push_limited.
        """
        kind, name = _parse_resource(resource)
        context = _parse_context(context)
        try:
            # The phone must be able to receive what the backend asks for:
            # the frame's own rules decide, not a copy of them here.
            Resource(kind=str(kind), name=name)
            Context(**context)
        except DeviceError as err:
            raise RpcError(RpcErrorCode.INVALID_PARAMS, f"resource or context: {err.message}") from None
        policy = self._policy.current
        ttl_s, require_biometric, match = _parse_opts(opts, policy)
        device = await self._store.active_device_for_user(user_id)
        if device is None:
            raise RpcError(RpcErrorCode.NOT_ENROLLED, f"user {user_id!r} has no push device")
        now = self._clock.now_ms()
        challenge_id = "ch_" + secrets.token_urlsafe(16)
        expires_at = now + ttl_s * 1000
        resource_key = f"{kind}:{name}"
        await self._guard.admit(user_id, resource_key, challenge_id, expires_at)
        match_code, choices = _number_match(match, policy.match_digits)
        challenge = Challenge(
            challenge_id=challenge_id,
            user_id=user_id,
            device_id=device.device_id,
            resource_kind=kind,
            resource_name=name,
            context=context,
            created_at=now,
            expires_at=expires_at,
            context_hash=context_hash(challenge_id, user_id, str(kind), name, context, expires_at),
            require_biometric=require_biometric,
            match=match,
            match_code=match_code,
            choices=choices,
        )
        audit = AuditEntry(now, "challenge.created", user_id=user_id, device_id=device.device_id,
                           challenge_id=challenge_id,
                           detail={"resource": resource_key, "context": context, "match": str(match),
                                   "require_biometric": require_biometric, "ttl_s": ttl_s})
        try:
            await self._store.create_challenge(challenge, [audit])
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._guard.release(challenge)
            raise
        self.expiry.schedule(challenge_id, self._clock.trio_deadline(expires_at))
        self._stats.incr("challenges_created")
        await self._events.emit("challenge.created", user_id=user_id, device_id=device.device_id,
                                challenge_id=challenge_id, resource=resource_key, expires_at=expires_at)
        self._mailboxes.tell(device.device_id, Deliver(challenge))
        result: dict[str, Any] = {"challenge_id": challenge_id, "expires_at": expires_at}
        if match_code is not None:
            result["code"] = match_code
        return result

    # -- decide --------------------------------------------------------------
    async def respond(self, device: Device, challenge_id: str, claims: dict[str, Any],
                      known: Challenge | None = None) -> RespondOutcome:
        """Judge a verified answer from `device` and commit it if it decides.

        `known` is the device actor's copy of the open challenge, if it has one:
        what the answer is judged on (the context hash, the number, the expiry)
        never changes, and whether it is still pending is decided by the store's
        conditional write, so the copy spares a read without risking a stale verdict.
        """
        challenge = known if known is not None and known.challenge_id == challenge_id else \
            await self._store.get_challenge(challenge_id)
        if challenge is None or challenge.device_id != device.device_id:
            return RespondOutcome(error=DeviceErrorCode.UNKNOWN_CHALLENGE)
        now = self._clock.now_ms()
        verdict = judge(challenge, claims, now)
        if not verdict.decides and challenge is known:
            # Refusals are rare: judge them on the store's copy, so a challenge
            # decided elsewhere is reported as such and not as, say, biometric_required.
            challenge = await self._store.get_challenge(challenge_id) or challenge
            verdict = judge(challenge, claims, now)
        if not verdict.decides:
            if verdict.error is DeviceErrorCode.EXPIRED and challenge.status is ChallengeStatus.PENDING:
                await self.expire(challenge_id)
            return RespondOutcome(error=verdict.error)
        assert verdict.status is not None
        decision = Decision(verdict.status, now, verdict.reason, verdict.biometric, verdict.fraud)
        decided = await self._decide(challenge_id, decision)
        if decided is None:
            current = await self._store.get_challenge(challenge_id)
            expired = current is not None and current.status is ChallengeStatus.EXPIRED
            return RespondOutcome(error=DeviceErrorCode.EXPIRED if expired else DeviceErrorCode.ALREADY_DECIDED)
        return RespondOutcome(status=decided.status, error=verdict.error, ended=decided)

    async def expire(self, challenge_id: str) -> None:
        decided = await self._decide(challenge_id, Decision(ChallengeStatus.EXPIRED, self._clock.now_ms(), "timeout"))
        if decided is not None:
            self._mailboxes.tell(decided.device_id, Ended(challenge_id, decided.status))

    async def cancel(self, challenge_id: str, reason: str = "cancelled") -> dict[str, Any]:
        """`challenge.cancel`: end a pending challenge; a finished one is returned as is.

        Raises:
            RpcError: not_found.
        """
        decided = await self._decide(challenge_id, Decision(ChallengeStatus.CANCELLED, self._clock.now_ms(), reason))
        if decided is not None:
            self._mailboxes.tell(decided.device_id, Ended(challenge_id, decided.status))
        return await self.get(challenge_id)

    async def cancel_for_device(self, device_id: str, reason: str) -> int:
        """Cancel every open challenge of a revoked device; returns how many."""
        count = 0
        for challenge in await self._store.open_challenges_for_device(device_id, 0):
            if await self._decide(challenge.challenge_id,
                                  Decision(ChallengeStatus.CANCELLED, self._clock.now_ms(), reason)):
                count += 1
        return count

    async def _decide(self, challenge_id: str, decision: Decision) -> Challenge | None:
        """Commit the decision if the challenge is still pending, then tell everyone.

        The store's conditional update is where "the first valid decision wins"
        is decided, on this node or any other.
        """
        audit = AuditEntry(decision.decided_at, "challenge.decided", challenge_id=challenge_id,
                           detail={"status": str(decision.status), "reason": decision.reason,
                                   "biometric": decision.biometric, "fraud": decision.fraud})
        decided = await self._store.decide_challenge(challenge_id, decision, [audit])
        if decided is None:
            return None
        self.expiry.cancel(challenge_id)
        self._stats.incr(f"decided.{decided.status}")
        # The decision is durable; what follows only informs, so it must not be
        # cut short by a caller's cancellation.
        with trio.CancelScope(shield=True):
            await self._guard.release(decided)
            await self._events.challenge_ended(challenge_id, challenge_view(decided))
            await self._events.emit("challenge.decided", user_id=decided.user_id, device_id=decided.device_id,
                                    challenge_id=challenge_id, status=str(decided.status),
                                    reason=decided.reason, fraud=decided.fraud, decided_at=decided.decided_at)
            await self._guard.after_decision(decided)
        return decided

    # -- read ----------------------------------------------------------------
    async def get(self, challenge_id: str) -> dict[str, Any]:
        challenge = await self._store.get_challenge(challenge_id)
        if challenge is None:
            raise RpcError(RpcErrorCode.NOT_FOUND, f"no challenge {challenge_id!r}")
        return challenge_view(challenge)

    async def wait(self, challenge_id: str, timeout_s: float) -> dict[str, Any]:
        """`challenge.wait`: the challenge once it is decided, or as it stands after timeout_s.

        Raises:
            RpcError: not_found.
        """
        timeout_s = min(max(float(timeout_s), 0.0), MAX_WAIT_S)
        # Subscribe before reading, so a decision between the read and the wait is not missed.
        async with self._bus.subscribe([challenge_topic(challenge_id)], buffer=16) as events:
            view = await self.get(challenge_id)
            if view["status"] != ChallengeStatus.PENDING:
                return view
            with trio.move_on_after(timeout_s):
                async for _topic, event in events:
                    if event.get("kind") == "challenge.ended":
                        return event["view"]
        return await self.get(challenge_id)


def challenge_view(challenge: Challenge) -> dict[str, Any]:
    """What `challenge.get` and `challenge.wait` return."""
    delivery = challenge.delivery
    return {
        "challenge_id": challenge.challenge_id,
        "user_id": challenge.user_id,
        "device_id": challenge.device_id,
        "resource": {"kind": str(challenge.resource_kind), "name": challenge.resource_name},
        "status": str(challenge.status),
        "created_at": challenge.created_at,
        "expires_at": challenge.expires_at,
        "decided_at": challenge.decided_at,
        "reason": challenge.reason,
        "biometric": challenge.biometric,
        "fraud": challenge.fraud,
        "match": str(challenge.match),
        "delivery": {
            "channel": delivery.channel,
            "sent_at": delivery.sent_at,
            "delivered_at": delivery.delivered_at,
            "shown_at": delivery.shown_at,
        },
    }


def _parse_resource(resource: Any) -> tuple[ResourceKind, str]:
    if not isinstance(resource, dict):
        raise RpcError(RpcErrorCode.INVALID_PARAMS, "resource must be a map {kind, name}")
    try:
        kind = ResourceKind(resource.get("kind"))
    except ValueError:
        raise RpcError(RpcErrorCode.INVALID_PARAMS,
                       f"resource.kind must be one of {[k.value for k in ResourceKind]}") from None
    name = resource.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_RESOURCE_NAME:
        raise RpcError(RpcErrorCode.INVALID_PARAMS, "resource.name must be a non-empty string")
    return kind, name


def _parse_context(context: Any) -> dict[str, str | None]:
    if context is None:
        context = {}
    if not isinstance(context, dict):
        raise RpcError(RpcErrorCode.INVALID_PARAMS, f"context must be a map of {list(CONTEXT_FIELDS)}")
    unknown = set(context) - set(CONTEXT_FIELDS)
    if unknown:
        raise RpcError(RpcErrorCode.INVALID_PARAMS, f"unknown context fields {sorted(map(str, unknown))}")
    parsed: dict[str, str | None] = {}
    for name in CONTEXT_FIELDS:
        value = context.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > MAX_CONTEXT_VALUE):
            raise RpcError(RpcErrorCode.INVALID_PARAMS, f"context.{name} must be a string of at most 256")
        parsed[name] = value
    return parsed


def _parse_opts(opts: Any, policy: Any) -> tuple[int, bool, MatchMode]:
    if opts is None:
        opts = {}
    if not isinstance(opts, dict):
        raise RpcError(RpcErrorCode.INVALID_PARAMS, "opts must be a map")
    unknown = set(opts) - {"ttl_s", "require_biometric", "match"}
    if unknown:
        raise RpcError(RpcErrorCode.INVALID_PARAMS, f"unknown opts {sorted(map(str, unknown))}")
    ttl_s = opts.get("ttl_s", policy.challenge_ttl_s)
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or not 1 <= ttl_s <= 600:
        raise RpcError(RpcErrorCode.INVALID_PARAMS, "ttl_s must be an integer from 1 to 600")
    require_biometric = opts.get("require_biometric", policy.require_biometric)
    if not isinstance(require_biometric, bool):
        raise RpcError(RpcErrorCode.INVALID_PARAMS, "require_biometric must be a boolean")
    # Per-challenge options may tighten the policy but never loosen it.
    require_biometric = require_biometric or policy.require_biometric
    try:
        match = MatchMode(opts.get("match", policy.match))
    except ValueError:
        raise RpcError(RpcErrorCode.INVALID_PARAMS,
                       f"match must be one of {[m.value for m in MatchMode]}") from None
    return ttl_s, require_biometric, match


def _number_match(mode: MatchMode, digits: int) -> tuple[str | None, tuple[str, ...] | None]:
    """The number the login screen shows and, for `choose`, the phone's three choices."""
    if mode is MatchMode.NONE:
        return None, None
    if mode is MatchMode.TYPE:
        return f"{secrets.randbelow(10 ** digits):0{digits}d}", None
    numbers: set[str] = set()
    while len(numbers) < 3:
        numbers.add(f"{secrets.randbelow(100):02d}")
    choices = list(numbers)
    secrets.SystemRandom().shuffle(choices)
    return choices[0], tuple(sorted(choices))
