"""Engine events: one shape for the operator feed, the audit trail's live twin.

Every event goes to the "events" topic (what `events.subscribe` serves).
A challenge's decision also goes to "challenge.<id>" with the challenge as
the backend sees it, which is what `challenge.wait` listens on, on whichever
node the waiter is: one message per challenge, and no store read to answer.
"""

from __future__ import annotations

from typing import Any

from engine.clock import Clock
from engine.state.base import EventBus

ALL_EVENTS_TOPIC = "events"

EVENT_KINDS = (
    "challenge.created",
    "challenge.sent",
    "challenge.delivered",
    "challenge.shown",
    "challenge.fallback",
    "challenge.decided",
    "device.connected",
    "device.disconnected",
    "device.enrolled",
    "device.revoked",
    "enrollment.started",
    "guard.blocked",
    "guard.suspended",
    "guard.cleared",
    "fraud.reported",
    "policy.changed",
    "actor.crashed",
    "totp.enrollment_started",
    "totp.confirmed",
    "totp.verified",
    "totp.failed",
    "totp.locked",
    "totp.reset",
    "totp.removed",
)


def challenge_topic(challenge_id: str) -> str:
    return f"challenge.{challenge_id}"


class EventPublisher:
    def __init__(self, bus: EventBus, node_id: str, clock: Clock):
        self._bus = bus
        self._node_id = node_id
        self._clock = clock

    async def emit(
        self,
        kind: str,
        *,
        user_id: str | None = None,
        device_id: str | None = None,
        challenge_id: str | None = None,
        **detail: Any,
    ) -> None:
        event: dict[str, Any] = {"kind": kind, "at": self._clock.now_ms(), "node": self._node_id}
        if user_id is not None:
            event["user_id"] = user_id
        if device_id is not None:
            event["device_id"] = device_id
        if challenge_id is not None:
            event["challenge_id"] = challenge_id
        event.update(detail)
        await self._bus.publish(ALL_EVENTS_TOPIC, event)

    async def challenge_ended(self, challenge_id: str, view: dict[str, Any]) -> None:
        """Tell the challenge's waiters, on any node, how it ended."""
        await self._bus.publish(challenge_topic(challenge_id), {"kind": "challenge.ended", "view": view})
