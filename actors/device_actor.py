"""One actor per enrolled device.

The actor owns its phone's live link and the device's open challenges. It
reads a bounded mailbox, delivers challenges, records receipts (sent,
delivered, shown), hands signed answers to the challenge supervisor, and
falls back to a push provider when the phone is offline or does not ack in
time. When the phone is gone and nothing is open it passivates, so memory is
paid only for active devices; the registry starts it again on demand.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jwt
import trio

from actors.messages import ActorMessage, Attach, Deliver, Detach, DeviceLink, Ended, FromPhone, Revoke
from engine.clock import Clock
from engine.config import Config
from engine.errors import CLOSE_REPLACED, CLOSE_REVOKED, DeviceError, DeviceErrorCode
from engine.events import EventPublisher
from engine.models import Challenge, Device
from engine.policy import PolicyService
from engine.protocol.device import (
    Ack,
    ChallengeFrame,
    Closed,
    Context,
    EncodeError,
    Error,
    Resource,
    Respond,
    Result,
    Revoked,
    ServerMessage,
    Unenroll,
    Update,
    Welcome,
)
from engine.push.base import PushProvider
from engine.stats import NodeStats
from engine.state.base import Presence
from engine.store.base import Store
from engine.tokens import DeviceTokenVerifier, TokenRejected

if TYPE_CHECKING:
    from actors.supervisor import ChallengeSupervisor
    from engine.enrollment import EnrollmentService

log = logging.getLogger(__name__)

WEBSOCKET_CHANNEL = "websocket"


@dataclass
class ActorDeps:
    """What every device actor of a node shares. Wired once by the node."""

    config: Config
    store: Store
    presence: Presence
    verifier: DeviceTokenVerifier
    policy: PolicyService
    push: PushProvider
    events: EventPublisher
    stats: NodeStats
    clock: Clock
    supervisor: ChallengeSupervisor | None = None
    enrollment: EnrollmentService | None = None


class Stop(Exception):
    """The actor ends for good (its device was revoked)."""


def challenge_frame(challenge: Challenge) -> ChallengeFrame:
    ctx = challenge.context
    return ChallengeFrame(
        id=challenge.challenge_id,
        account=challenge.user_id,
        resource=Resource(kind=str(challenge.resource_kind), name=challenge.resource_name),
        context=Context(app=ctx.get("app"), ip=ctx.get("ip"), location=ctx.get("location"),
                        user_agent=ctx.get("user_agent")),
        created_at=challenge.created_at,
        expires_at=challenge.expires_at,
        require_biometric=challenge.require_biometric,
        match=str(challenge.match),
        context_hash=challenge.context_hash,
        choices=challenge.choices,
    )


class DeviceActor:
    def __init__(self, device_id: str, deps: ActorDeps, cell: Any):
        self.device_id = device_id
        self._deps = deps
        self._cell = cell  # the registry's record: holds the link across restarts
        self.device: Device | None = None
        self.open: dict[str, Challenge] = {}
        self._ack_deadlines: dict[str, float] = {}
        self._fresh = False

    @property
    def link(self) -> DeviceLink | None:
        return self._cell.link

    @link.setter
    def link(self, value: DeviceLink | None) -> None:
        self._cell.link = value

    async def run(self, mailbox: trio.MemoryReceiveChannel[ActorMessage]) -> bool:
        """Serve the mailbox until the actor passivates (returns False) or its
        device is revoked or unknown (returns True after closing the link)."""
        deps = self._deps
        hint, self._cell.device_hint = self._cell.device_hint, None
        self.device = hint if hint is not None else await deps.store.get_device(self.device_id)
        if self.device is None or not self.device.active:
            if self.link is not None:
                # Revoked between its hello and now: still say why before 4403.
                await self.link.send(Revoked(reason="device revoked"))
                self.link.close(CLOSE_REVOKED, "device revoked")
                self.link = None
            return True
        await self._reload_open()
        self._fresh = True  # what is open was just read: the first attach need not read it again
        idle_since = trio.current_time()
        while True:
            deadline = min(self._ack_deadlines.values(), default=float("inf"))
            passivate_at = float("inf")
            if self.link is None and not self.open:
                passivate_at = idle_since + deps.config.actor_idle_s
            message = None
            with trio.move_on_at(min(deadline, passivate_at)):
                message = await mailbox.receive()
            if message is None:
                if trio.current_time() >= passivate_at:
                    return False
                await self._ack_timeouts()
                continue
            try:
                await self.handle(message)
            except Stop:
                return True
            self._fresh = False
            idle_since = trio.current_time()

    async def handle(self, message: ActorMessage) -> None:
        match message:
            case Attach(link=link):
                await self._attach(link)
            case Detach(link=link):
                await self._detach(link)
            case FromPhone(link=link, message=frame):
                if link is self.link:
                    await self._from_phone(link, frame)
            case Deliver(challenge=challenge):
                await self._deliver(challenge)
            case Ended(challenge_id=cid, status=status):
                self._forget(cid)
                if self.link is not None:
                    await self.link.send(Closed(id=cid, status=str(status)))
            case Revoke(reason=reason):
                await self._revoked(reason)

    # -- connection ----------------------------------------------------------
    async def _attach(self, link: DeviceLink) -> None:
        deps = self._deps
        old = self.link
        if old is not None and old is not link:
            old.close(CLOSE_REPLACED, "replaced by a newer connection")
        self.link = link
        now = deps.clock.now_ms()
        await deps.presence.connected(self.device_id, deps.config.node_id, link.conn_id, now)
        # The store is the truth: an `Ended` dropped while the mailbox was full
        # must not resurrect a finished challenge on the phone.
        if not self._fresh:
            await self._reload_open()
        pending = tuple(challenge_frame(ch) for ch in self.open.values())
        heartbeat_s = max(1, round(deps.config.heartbeat_s))
        try:
            await link.send(Welcome(heartbeat_s=heartbeat_s, pending=pending))
        except EncodeError:
            # More open challenges than one 64 KiB frame holds: the welcome
            # comes empty and each challenge follows in a frame of its own.
            await link.send(Welcome(heartbeat_s=heartbeat_s, pending=()), *pending)
        for challenge in self.open.values():
            await self._mark_sent(challenge, now)
        deps.stats.incr("device_connects")
        await deps.events.emit("device.connected", user_id=self.device.user_id if self.device else None,
                               device_id=self.device_id, conn_id=link.conn_id)

    async def _detach(self, link: DeviceLink) -> None:
        if link is not self.link:
            return
        deps = self._deps
        self.link = None
        now = deps.clock.now_ms()
        await deps.presence.disconnected(self.device_id, link.conn_id)
        await deps.store.touch_device(self.device_id, now)
        await deps.events.emit("device.disconnected", device_id=self.device_id, conn_id=link.conn_id)
        # Whatever was sent but not acknowledged must now reach the phone another way.
        for cid in list(self._ack_deadlines):
            del self._ack_deadlines[cid]
            if cid in self.open:
                await self._fall_back(self.open[cid], "disconnected before ack")

    # -- challenges ----------------------------------------------------------
    async def _reload_open(self) -> None:
        deps = self._deps
        challenges = await deps.store.open_challenges_for_device(self.device_id, deps.clock.now_ms())
        self.open = {ch.challenge_id: ch for ch in challenges}
        self._ack_deadlines = {cid: t for cid, t in self._ack_deadlines.items() if cid in self.open}

    async def _deliver(self, challenge: Challenge) -> None:
        self.open[challenge.challenge_id] = challenge
        if self.link is not None and await self.link.send(challenge_frame(challenge)):
            await self._mark_sent(challenge, self._deps.clock.now_ms())
        else:
            await self._fall_back(challenge, "phone offline")

    async def _mark_sent(self, challenge: Challenge, now: int) -> None:
        deps = self._deps
        if challenge.delivery.delivered_at is None:
            self._ack_deadlines[challenge.challenge_id] = (
                trio.current_time() + deps.policy.current.ack_timeout_s)
        await self._note_delivery(challenge.challenge_id, channel=WEBSOCKET_CHANNEL, sent_at=now)
        await deps.events.emit("challenge.sent", user_id=challenge.user_id, device_id=self.device_id,
                               challenge_id=challenge.challenge_id, channel=WEBSOCKET_CHANNEL)

    async def _ack_timeouts(self) -> None:
        now = trio.current_time()
        for cid, deadline in list(self._ack_deadlines.items()):
            if deadline <= now:
                del self._ack_deadlines[cid]
                if cid in self.open:
                    await self._fall_back(self.open[cid], "no ack in time")

    async def _fall_back(self, challenge: Challenge, why: str) -> None:
        deps = self._deps
        assert self.device is not None
        now = deps.clock.now_ms()
        attempt = await deps.push.wake(self.device, challenge, now)
        deps.stats.incr("push_fallbacks")
        await self._note_delivery(challenge.challenge_id, channel=attempt.provider, sent_at=now)
        await deps.events.emit("challenge.fallback", user_id=challenge.user_id, device_id=self.device_id,
                               challenge_id=challenge.challenge_id, provider=attempt.provider,
                               accepted=attempt.accepted, why=why, detail=attempt.detail)

    async def _note_delivery(self, challenge_id: str, **times: Any) -> None:
        """Record delivery times without holding up the mailbox for a commit;
        when the store's queue is full, wait for it like any writer."""
        try:
            self._deps.store.record_delivery_soon(challenge_id, **times)
        except trio.WouldBlock:
            await self._deps.store.record_delivery(challenge_id, **times)

    def _forget(self, challenge_id: str) -> None:
        self.open.pop(challenge_id, None)
        self._ack_deadlines.pop(challenge_id, None)

    # -- frames from the phone -------------------------------------------------
    async def _from_phone(self, link: DeviceLink, frame: Any) -> None:
        match frame:
            case Ack(id=cid, shown=shown):
                await self._ack(cid, shown)
            case Respond(token=token):
                await self._respond(link, token)
            case Update(push_token=push_token):
                await self._deps.store.update_push_token(self.device_id, push_token)
                assert self.device is not None
                self.device = dataclasses.replace(self.device, push_token=push_token)
            case Unenroll(token=token):
                await self._unenroll(link, token)

    async def _ack(self, cid: str, shown: bool) -> None:
        challenge = self.open.get(cid)
        if challenge is None:
            return  # a late receipt for a finished challenge changes nothing
        deps = self._deps
        now = deps.clock.now_ms()
        self._ack_deadlines.pop(cid, None)
        await self._note_delivery(cid, delivered_at=now, shown_at=now if shown else None)
        delivery = challenge.delivery
        if delivery.delivered_at is None:
            deps.stats.delivery_ms.observe(now - challenge.created_at)
            await deps.events.emit("challenge.delivered", user_id=challenge.user_id,
                                   device_id=self.device_id, challenge_id=cid)
        if shown and delivery.shown_at is None:
            deps.stats.shown_ms.observe(now - challenge.created_at)
            await deps.events.emit("challenge.shown", user_id=challenge.user_id,
                                   device_id=self.device_id, challenge_id=cid)
        self.open[cid] = dataclasses.replace(challenge, delivery=dataclasses.replace(
            delivery, delivered_at=delivery.delivered_at or now,
            shown_at=delivery.shown_at or (now if shown else None)))

    async def _verified(self, link: DeviceLink, token: str) -> dict[str, Any] | None:
        assert self.device is not None
        try:
            return await self._deps.verifier.verify_signed_action(token, self.device_id, self.device.public_key)
        except TokenRejected as exc:
            log.debug("device %s sent a rejected token: %s", self.device_id, exc)
            return None

    async def _respond(self, link: DeviceLink, token: str) -> None:
        deps = self._deps
        claims = await self._verified(link, token)
        if claims is None:
            await link.send(Error(code=str(DeviceErrorCode.BAD_SIGNATURE), message="respond token rejected",
                            id=_claimed_cid(token)))
            return
        cid = claims.get("cid")
        if not isinstance(cid, str):
            await link.send(Error(code=str(DeviceErrorCode.UNKNOWN_CHALLENGE), message="token has no cid"))
            return
        assert self.device is not None and deps.supervisor is not None
        outcome = await deps.supervisor.respond(self.device, cid, claims, self.open.get(cid))
        frames: list[ServerMessage] = []
        if outcome.error is not None:
            err = DeviceError(outcome.error, id=cid)
            frames.append(Error(code=str(err.code), message=err.message, id=cid))
        else:
            assert outcome.status is not None
            frames.append(Result(id=cid, status=str(outcome.status)))
        if outcome.ended is not None:
            self._forget(cid)
            frames.append(Closed(id=cid, status=str(outcome.ended.status)))
        await link.send(*frames)

    async def _unenroll(self, link: DeviceLink, token: str) -> None:
        claims = await self._verified(link, token)
        # `act` binds the token to this purpose: a signed answer to a challenge
        # must never double as a request to delete the account.
        if claims is None or claims.get("act") != "unenroll":
            await link.send(Error(code=str(DeviceErrorCode.BAD_SIGNATURE), message="unenroll token rejected"))
            return
        assert self._deps.enrollment is not None
        await self._deps.enrollment.revoke_device(self.device_id, reason="unenrolled", notify=False)
        await self._revoked("unenrolled")

    async def _revoked(self, reason: str) -> None:
        link = self.link
        if link is not None:
            # Revocation cancelled these in the store already; take them off the screen.
            await link.send(*[Closed(id=cid, status="cancelled") for cid in self.open], Revoked(reason=reason))
            link.close(CLOSE_REVOKED, "device revoked")
            await self._deps.presence.disconnected(self.device_id, link.conn_id)
            self.link = None
        raise Stop


def _claimed_cid(token: str) -> str | None:
    """The cid a rejected token names, unverified, only to label the error frame."""
    try:
        cid = jwt.decode(token, options={"verify_signature": False}).get("cid")
    except jwt.PyJWTError:
        return None
    return cid if isinstance(cid, str) and len(cid) <= 64 else None
