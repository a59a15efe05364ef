"""The behaviour every `TotpStore` (`store.totp`) must show, through the protocol only."""

from __future__ import annotations

import dataclasses

import pytest
import trio

from engine.models import AuditEntry, TotpLockout, TotpRecord, TotpSecret
from engine.store.base import Store
from engine.totp.codes import TotpAlgorithm, TotpParams
from tests.engine.store.conftest import StoreFactory

pytestmark = pytest.mark.trio

NOW = 1_700_000_000_000
LOCKOUT = TotpLockout(max_failures=3, base_ms=30_000, cap_ms=120_000)


def secret(secret_id: str, *, created_at: int = NOW) -> TotpSecret:
    return TotpSecret(secret_id=secret_id, sealed=b"\x01sealed-" + secret_id.encode(),
                      params=TotpParams(digits=8, period=30, algorithm=TotpAlgorithm.SHA256),
                      issuer="Acme", label="alice@example.com", created_at=created_at)


async def enrolled(store: Store, user_id: str = "alice", secret_id: str = "s1", step: int = 100) -> None:
    await store.totp.put_pending(user_id, secret(secret_id))
    assert await store.totp.confirm(user_id, secret_id, step, NOW)


async def test_a_pending_secret_becomes_active_when_confirmed(store: Store) -> None:
    assert await store.totp.get("alice") is None
    pending = secret("s1")
    await store.totp.put_pending("alice", pending, [AuditEntry(NOW, "totp.enrollment_started", user_id="alice")])
    assert await store.totp.get("alice") == TotpRecord("alice", pending=pending)

    confirmed = AuditEntry(NOW + 5, "totp.confirmed", user_id="alice")
    assert await store.totp.confirm("alice", "s1", 100, NOW + 5, [confirmed])

    record = await store.totp.get("alice")
    assert record == TotpRecord("alice", active=dataclasses.replace(pending, confirmed_at=NOW + 5, last_step=100),
                                last_used_at=NOW + 5)
    assert [r.kind for r in await store.query_audit(user_id="alice")] == ["totp.enrollment_started",
                                                                          "totp.confirmed"]


async def test_confirm_needs_the_current_pending_secret(store: Store) -> None:
    await store.totp.put_pending("alice", secret("s1"))
    await store.totp.put_pending("alice", secret("s2"))  # a second begin replaces the first
    assert not await store.totp.confirm("alice", "s1", 100, NOW, [AuditEntry(NOW, "x", user_id="alice")])
    assert not await store.totp.confirm("bob", "s2", 100, NOW)
    assert await store.query_audit() == []
    assert await store.totp.confirm("alice", "s2", 100, NOW)
    assert not await store.totp.confirm("alice", "s2", 101, NOW)  # no longer pending


async def test_a_reset_keeps_the_old_secret_until_the_new_one_is_confirmed(store: Store) -> None:
    await enrolled(store, secret_id="old")
    await store.totp.put_pending("alice", secret("new"))
    record = await store.totp.get("alice")
    assert record is not None and record.active is not None and record.pending is not None
    assert (record.active.secret_id, record.pending.secret_id) == ("old", "new")
    assert await store.totp.use_step("alice", "old", 101, NOW)
    assert await store.totp.confirm("alice", "new", 102, NOW)
    record = await store.totp.get("alice")
    assert record is not None and record.pending is None
    assert record.active is not None and record.active.secret_id == "new"
    assert not await store.totp.use_step("alice", "old", 103, NOW)


async def test_a_step_is_spent_once_and_earlier_steps_with_it(store: Store) -> None:
    await enrolled(store, step=100)
    assert not await store.totp.use_step("alice", "s1", 100, NOW)
    assert not await store.totp.use_step("alice", "s1", 99, NOW)
    assert await store.totp.use_step("alice", "s1", 102, NOW)
    assert not await store.totp.use_step("alice", "s1", 101, NOW)
    assert not await store.totp.use_step("alice", "wrong-id", 200, NOW)


async def test_concurrent_uses_of_one_step_accept_exactly_one(store: Store) -> None:
    await enrolled(store, step=100)
    outcomes: list[bool] = []

    async def use() -> None:
        outcomes.append(await store.totp.use_step("alice", "s1", 101, NOW,
                                                  [AuditEntry(NOW, "totp.verified", user_id="alice")]))

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(use)
    assert sorted(outcomes) == [False] * 19 + [True]
    assert len(await store.query_audit(kind="totp.verified")) == 1


async def test_failures_lock_out_with_a_doubling_capped_backoff(store: Store) -> None:
    await enrolled(store)
    results = [await store.totp.record_failure("alice", NOW + i, LOCKOUT,
                                               [AuditEntry(NOW + i, "totp.failed", user_id="alice")])
               for i in range(6)]
    assert results == [(1, None), (2, None), (3, NOW + 2 + 30_000), (4, NOW + 3 + 60_000),
                       (5, NOW + 4 + 120_000), (6, NOW + 5 + 120_000)]
    record = await store.totp.get("alice")
    assert record is not None and (record.failures, record.locked_until) == (6, NOW + 5 + 120_000)
    locks = await store.query_audit(kind="totp.locked")
    assert [(r.user_id, r.detail["failures"], r.detail["until"]) for r in locks] == [
        ("alice", 3, NOW + 2 + 30_000), ("alice", 4, NOW + 3 + 60_000),
        ("alice", 5, NOW + 4 + 120_000), ("alice", 6, NOW + 5 + 120_000)]
    assert len(await store.query_audit(kind="totp.failed")) == 6


async def test_a_success_resets_the_throttle_and_a_new_enrollment_does_not(store: Store) -> None:
    await enrolled(store)
    for i in range(3):
        await store.totp.record_failure("alice", NOW, LOCKOUT)
    await store.totp.put_pending("alice", secret("s2"))
    record = await store.totp.get("alice")
    assert record is not None and record.failures == 3 and record.locked_until is not None
    assert await store.totp.use_step("alice", "s1", 101, NOW + 1)
    record = await store.totp.get("alice")
    assert record is not None
    assert (record.failures, record.locked_until, record.last_used_at) == (0, None, NOW + 1)


async def test_removal_deletes_secrets_but_keeps_the_throttle(store: Store) -> None:
    await enrolled(store)
    await store.totp.record_failure("alice", NOW, LOCKOUT)
    assert await store.totp.remove("alice", [AuditEntry(NOW, "totp.removed", user_id="alice")])
    assert not await store.totp.remove("alice", [AuditEntry(NOW, "totp.removed", user_id="alice")])
    assert await store.totp.get("alice") == TotpRecord("alice", failures=1, last_used_at=NOW)
    assert len(await store.query_audit(kind="totp.removed")) == 1


async def test_users_are_independent(store: Store) -> None:
    await enrolled(store, "alice", "a1")
    await enrolled(store, "bob", "b1")
    await store.totp.record_failure("alice", NOW, LOCKOUT)
    assert await store.totp.use_step("bob", "b1", 101, NOW)
    assert not await store.totp.use_step("bob", "a1", 102, NOW)
    alice, bob = await store.totp.get("alice"), await store.totp.get("bob")
    assert alice is not None and bob is not None
    assert (alice.failures, bob.failures) == (1, 0)


async def test_totp_state_survives_a_restart(store_factory: StoreFactory) -> None:
    async with store_factory() as store:
        await enrolled(store, step=100)
        await store.totp.use_step("alice", "s1", 105, NOW)
        await store.totp.put_pending("alice", secret("s2"))
        for _ in range(3):
            await store.totp.record_failure("alice", NOW, LOCKOUT)
        before = await store.totp.get("alice")
    async with store_factory() as store:
        assert await store.totp.get("alice") == before
        assert not await store.totp.use_step("alice", "s1", 105, NOW)
