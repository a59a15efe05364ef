"""Push enrollment: a backend starts it, the phone completes it with the code.

The one-time code carries 192 random bits and only its SHA-256 is stored: a
code that is guessable by neither brute force nor a stolen database. It is
valid for `enrollment_ttl_s` (10 minutes) and once. Completing it revokes the
user's previous device (a user has one push device), whose live connection is
told `revoked` and closed with 4403.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from engine.clock import Clock
from engine.config import Config
from engine.errors import DeviceError, DeviceErrorCode, RpcError, RpcErrorCode
from engine.events import EventPublisher
from engine.models import AuditEntry, Device, Enrollment, Platform
from engine.protocol.device import Enroll
from engine.store.base import EnrollmentRejected, Store

log = logging.getLogger(__name__)

MAX_USER_ID = 256

# Called after a device is revoked: cancel its challenges, tell its actor.
OnRevoked = Callable[[Device, str, bool], Awaitable[None]]


def hash_code(code: str) -> bytes:
    return hashlib.sha256(code.encode()).digest()


def check_user_id(user_id: Any) -> str:
    if not isinstance(user_id, str) or not 1 <= len(user_id) <= MAX_USER_ID:
        raise RpcError(RpcErrorCode.INVALID_PARAMS, "user_id must be a string of 1 to 256 characters")
    return user_id


class EnrollmentService:
    def __init__(self, store: Store, config: Config, events: EventPublisher, clock: Clock,
                 on_revoked: OnRevoked, ws_url: Callable[[], str]):
        self._store = store
        self._config = config
        self._events = events
        self._clock = clock
        self._on_revoked = on_revoked
        self._ws_url = ws_url

    async def begin(self, user_id: str, opts: Any = None) -> dict[str, Any]:
        """`push.begin_enrollment`: a fresh one-time code and the URI for its QR code."""
        check_user_id(user_id)
        if opts is not None and not isinstance(opts, dict):
            raise RpcError(RpcErrorCode.INVALID_PARAMS, "opts must be a map")
        opts = opts or {}
        ttl_s = opts.get("ttl_s", self._config.enrollment_ttl_s)
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or not 10 <= ttl_s <= 600:
            raise RpcError(RpcErrorCode.INVALID_PARAMS, "ttl_s must be an integer from 10 to 600")
        now = self._clock.now_ms()
        enrollment = Enrollment("enr_" + secrets.token_urlsafe(12), user_id, now, now + ttl_s * 1000)
        code = secrets.token_urlsafe(24)
        audit = AuditEntry(now, "enrollment.started", user_id=user_id,
                           detail={"enrollment_id": enrollment.enrollment_id})
        await self._store.create_enrollment(enrollment, hash_code(code), [audit])
        await self._events.emit("enrollment.started", user_id=user_id, enrollment_id=enrollment.enrollment_id)
        query = urlencode({"v": 1, "code": code, "url": self._ws_url(), "account": user_id,
                           "audience": self._config.audience})
        return {"enrollment_id": enrollment.enrollment_id, "code": code,
                "uri": f"pushguard://enroll?{query}", "expires_at": enrollment.expires_at}

    async def status(self, enrollment_id: Any) -> dict[str, Any]:
        if not isinstance(enrollment_id, str):
            raise RpcError(RpcErrorCode.INVALID_PARAMS, "enrollment_id must be a string")
        enrollment = await self._store.get_enrollment(enrollment_id, self._clock.now_ms())
        if enrollment is None:
            raise RpcError(RpcErrorCode.NOT_FOUND, f"no enrollment {enrollment_id!r}")
        result: dict[str, Any] = {"status": str(enrollment.status), "user_id": enrollment.user_id,
                                  "expires_at": enrollment.expires_at}
        if enrollment.device_id is not None:
            result["device_id"] = enrollment.device_id
        return result

    async def complete(self, message: Enroll) -> Device:
        """The phone's `enroll` frame: create its device, revoke the previous one.

        Raises:
            DeviceError: enrollment_failed.
        """
        now = self._clock.now_ms()
        device = Device(
            device_id="dev_" + secrets.token_urlsafe(12),
            user_id="",  # the store fills in the enrollment's user
            public_key=message.public_key_bytes,
            platform=Platform(message.platform),
            enrolled_at=now,
            push_token=message.push_token,
            device_name=message.device_name,
            app_version=message.app_version,
        )
        audit = AuditEntry(now, "device.enrolled", device_id=device.device_id,
                           detail={"platform": message.platform, "device_name": message.device_name})
        try:
            enrollment, revoked = await self._store.complete_enrollment(
                hash_code(message.code), device, now, [audit])
        except EnrollmentRejected:
            raise DeviceError(DeviceErrorCode.ENROLLMENT_FAILED) from None
        device = await self._store.get_device(device.device_id) or device
        await self._events.emit("device.enrolled", user_id=enrollment.user_id, device_id=device.device_id,
                                enrollment_id=enrollment.enrollment_id, platform=message.platform)
        if revoked is not None:
            await self._revoked(revoked, "replaced by a new enrollment", True)
        return device

    async def revoke_user(self, user_id: str, by: str) -> bool:
        """`push.revoke`: revoke the user's device, if any."""
        check_user_id(user_id)
        device = await self._store.active_device_for_user(user_id)
        if device is None:
            return False
        return await self.revoke_device(device.device_id, reason=f"revoked by {by}")

    async def revoke_device(self, device_id: str, reason: str, notify: bool = True) -> bool:
        now = self._clock.now_ms()
        audit = AuditEntry(now, "device.revoked", device_id=device_id, detail={"reason": reason})
        revoked = await self._store.revoke_device(device_id, now, [audit])
        if revoked is None:
            return False
        await self._revoked(revoked, reason, notify)
        return True

    async def _revoked(self, device: Device, reason: str, notify: bool) -> None:
        log.info("device %s of user %s revoked: %s", device.device_id, device.user_id, reason)
        await self._events.emit("device.revoked", user_id=device.user_id, device_id=device.device_id,
                                reason=reason)
        await self._on_revoked(device, reason, notify)
