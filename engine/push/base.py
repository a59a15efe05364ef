"""Push providers wake a phone that is offline or silent (APNs, FCM).

The device actor calls a provider when its phone has no live connection or
does not acknowledge a challenge within `ack_timeout_s`. Providers that talk
to Apple and Google come with their own issue; today's provider records the
attempt so that the fallback path is exercised and visible end to end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from engine.models import Challenge, Device


@dataclass(frozen=True, slots=True)
class PushAttempt:
    provider: str
    device_id: str
    challenge_id: str
    at: int
    accepted: bool
    detail: str = ""


class PushProvider(Protocol):
    name: str

    async def wake(self, device: Device, challenge: Challenge, now_ms: int) -> PushAttempt:
        """Ask the platform's push service to show the challenge on the phone.
        Never raises for a delivery failure: the attempt says what happened."""
