"""What device actors receive in their mailboxes, and the link they write to.

Messages from the phone carry the link they arrived on, so an actor can tell
a current connection from a stale one. Calls carry a one-shot reply channel;
casts do not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from engine.models import Challenge, ChallengeStatus, Device
from engine.protocol.device import ClientMessage, ServerMessage


class DeviceLink(Protocol):
    """The node's side of one authenticated phone connection (the gateway's)."""

    conn_id: str
    device_id: str

    async def send(self, *messages: ServerMessage) -> bool:
        """Send frames to the phone, in order and in one write; False if the link
        is closing, or the phone took too long to read them (the link is then
        being closed with 4429)."""

    def close(self, code: int, reason: str = "") -> None:
        """Close the connection with a websocket close code, without waiting."""


@dataclass(frozen=True, slots=True)
class Attach:
    """The phone authenticated on `link`; it replaces any older link. `device` is
    the record its hello was verified against, which spares a newly started
    actor reading it again."""

    link: DeviceLink
    device: Device | None = None


@dataclass(frozen=True, slots=True)
class Detach:
    link: DeviceLink


@dataclass(frozen=True, slots=True)
class FromPhone:
    link: DeviceLink
    message: ClientMessage


@dataclass(frozen=True, slots=True)
class Deliver:
    """A new challenge for this device."""

    challenge: Challenge


@dataclass(frozen=True, slots=True)
class Ended:
    """The challenge ended elsewhere (expiry, cancellation, another node)."""

    challenge_id: str
    status: ChallengeStatus


@dataclass(frozen=True, slots=True)
class Revoke:
    """The device was revoked: tell the phone, close 4403, stop."""

    reason: str


ActorMessage = Attach | Detach | FromPhone | Deliver | Ended | Revoke
