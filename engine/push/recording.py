"""A push provider that records each attempt instead of calling APNs or FCM.

It is what a single node runs with until real providers are configured: the
fallback decision, the audit record and the `channel` of the challenge's
delivery are all real; only the call to Apple or Google is missing, and
`accepted` says so (False: nothing was sent to the phone).
"""

from __future__ import annotations

from collections import deque

from engine.models import Challenge, Device
from engine.push.base import PushAttempt


class RecordingPushProvider:
    name = "recording"

    def __init__(self, keep: int = 10_000):
        self.attempts: deque[PushAttempt] = deque(maxlen=keep)
        self.total = 0

    async def wake(self, device: Device, challenge: Challenge, now_ms: int) -> PushAttempt:
        self.total += 1
        detail = "no push token" if not device.push_token else "recorded; no APNs/FCM provider configured"
        attempt = PushAttempt(self.name, device.device_id, challenge.challenge_id, now_ms, False, detail)
        self.attempts.append(attempt)
        return attempt
