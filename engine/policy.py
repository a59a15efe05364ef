"""The live push policy: defaults from the config, operator changes from the store."""

from __future__ import annotations

import logging
from typing import Any

from engine.clock import Clock
from engine.config import ConfigError, Policy
from engine.events import EventPublisher
from engine.models import AuditEntry
from engine.store.base import Store

log = logging.getLogger(__name__)


class PolicyService:
    def __init__(self, store: Store, base: Policy, events: EventPublisher, clock: Clock):
        self._store = store
        self._base = base
        self._events = events
        self._clock = clock
        self.current = base

    async def load(self) -> None:
        """Apply the operator changes kept in the store over the configured defaults."""
        policy = self._base
        for key, value in (await self._store.load_policy()).items():
            try:
                policy = policy.with_changes({key: value})
            except ConfigError as exc:
                log.warning("ignoring stored policy change %s=%r: %s", key, value, exc)
        self.current = policy

    async def set(self, changes: dict[str, Any], by: str) -> Policy:
        """Validate, persist and apply changes; they take effect at once.

        Raises:
            ConfigError: a change is unknown or out of range (nothing is applied).
        """
        updated = self.current.with_changes(changes)
        stored = {key: updated.to_dict()[key] for key in changes}
        audit = AuditEntry(self._clock.now_ms(), "policy.changed", detail={"changes": stored, "by": by})
        await self._store.save_policy(stored, [audit])
        self.current = updated
        await self._events.emit("policy.changed", changes=stored, by=by)
        return updated
