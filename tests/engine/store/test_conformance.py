"""The behaviour every `Store` implementation must show, through the protocol only.

Runs once per param of the `store_factory` fixture (conftest.py). Nothing here
may depend on how an implementation works inside.
"""

from __future__ import annotations

import dataclasses

import pytest
import trio

from engine.models import (
    AuditEntry,
    Challenge,
    ChallengeStatus,
    Decision,
    Delivery,
    Device,
    Enrollment,
    EnrollmentStatus,
    MatchMode,
    Platform,
    ResourceKind,
)
from engine.store.base import EnrollmentRejected, Store
from tests.engine.store.conftest import StoreFactory

pytestmark = pytest.mark.trio

NOW = 1_700_000_000_000
MINUTE = 60_000


def code(n: int) -> bytes:
    """A stand-in for the hash of an enrollment code."""
    return n.to_bytes(32, "big")


def device(device_id: str, *, user_id: str = "ignored", enrolled_at: int = NOW) -> Device:
    return Device(
        device_id=device_id,
        user_id=user_id,
        public_key=bytes(range(32)),
        platform=Platform.IOS,
        enrolled_at=enrolled_at,
        push_token=f"token-{device_id}",
        device_name="Ada's phone",
        app_version="1.2.3",
    )


def enrollment(
    enrollment_id: str, user_id: str, *, expires_at: int = NOW + 10 * MINUTE
) -> Enrollment:
    return Enrollment(
        enrollment_id=enrollment_id, user_id=user_id, created_at=NOW, expires_at=expires_at
    )


async def enroll(store: Store, user_id: str, device_id: str, n: int, *, at: int = NOW) -> Device:
    """Enroll `device_id` for `user_id` with code `n`; returns the stored device."""
    await store.create_enrollment(enrollment(f"enr-{n}", user_id), code(n))
    await store.complete_enrollment(code(n), device(device_id, enrolled_at=at), at)
    stored = await store.get_device(device_id)
    assert stored is not None
    return stored


def challenge(
    challenge_id: str,
    dev: Device,
    *,
    created_at: int = NOW,
    expires_at: int = NOW + MINUTE,
) -> Challenge:
    return Challenge(
        challenge_id=challenge_id,
        user_id=dev.user_id,
        device_id=dev.device_id,
        resource_kind=ResourceKind.LOGIN,
        resource_name="vpn",
        context={"app": "VPN", "ip": "192.0.2.7"},
        created_at=created_at,
        expires_at=expires_at,
        context_hash="h-" + challenge_id,
    )


def approve(at: int = NOW + 1_000, reason: str = "user") -> Decision:
    return Decision(status=ChallengeStatus.APPROVED, decided_at=at, reason=reason, biometric=True)


# -- enrollments -------------------------------------------------------------


async def test_created_enrollment_is_pending_until_it_expires(store: Store) -> None:
    created = enrollment("e1", "alice", expires_at=NOW + MINUTE)
    await store.create_enrollment(created, code(1))

    assert await store.get_enrollment("e1", NOW) == created
    assert await store.get_enrollment("e1", NOW + MINUTE - 1) == created
    expired = await store.get_enrollment("e1", NOW + MINUTE)
    assert expired == dataclasses.replace(created, status=EnrollmentStatus.EXPIRED)
    assert await store.get_enrollment("nope", NOW) is None


async def test_completing_an_enrollment_registers_the_device_for_the_enrolled_user(
    store: Store,
) -> None:
    await store.create_enrollment(enrollment("e1", "alice"), code(1))

    # The phone claims another user: the enrollment's user wins.
    done, revoked = await store.complete_enrollment(
        code(1), device("d1", user_id="mallory"), NOW + 5
    )

    assert revoked is None
    assert done == dataclasses.replace(
        enrollment("e1", "alice"), status=EnrollmentStatus.COMPLETED, device_id="d1"
    )
    assert await store.get_enrollment("e1", NOW + 5) == done
    expected = device("d1", user_id="alice")
    assert await store.get_device("d1") == expected
    assert await store.active_device_for_user("alice") == expected
    assert await store.active_device_for_user("mallory") is None


async def test_an_unknown_used_or_expired_code_is_rejected_without_change(store: Store) -> None:
    await store.create_enrollment(enrollment("e1", "alice", expires_at=NOW + MINUTE), code(1))
    await store.create_enrollment(enrollment("e2", "bob", expires_at=NOW + MINUTE), code(2))

    with pytest.raises(EnrollmentRejected):
        await store.complete_enrollment(code(99), device("d-unknown"), NOW)
    with pytest.raises(EnrollmentRejected):  # expiry is exclusive: at expires_at it is over
        await store.complete_enrollment(code(2), device("d-late"), NOW + MINUTE)
    await store.complete_enrollment(code(1), device("d1"), NOW)
    with pytest.raises(EnrollmentRejected):
        await store.complete_enrollment(code(1), device("d-again"), NOW + 1)

    for rejected in ("d-unknown", "d-late", "d-again"):
        assert await store.get_device(rejected) is None
    assert (await store.active_device_for_user("alice")).device_id == "d1"  # type: ignore[union-attr]
    assert await store.active_device_for_user("bob") is None
    still_pending = await store.get_enrollment("e2", NOW)
    assert still_pending is not None and still_pending.status is EnrollmentStatus.PENDING
    assert await store.query_audit() == []


async def test_a_second_enrollment_revokes_the_first_device(store: Store) -> None:
    first = await enroll(store, "alice", "d1", 1)
    await store.create_enrollment(enrollment("e2", "alice"), code(2))

    done, revoked = await store.complete_enrollment(code(2), device("d2"), NOW + 7)

    assert done.device_id == "d2"
    assert revoked == dataclasses.replace(first, revoked_at=NOW + 7)
    assert await store.get_device("d1") == revoked
    assert not revoked.active
    assert (await store.active_device_for_user("alice")).device_id == "d2"  # type: ignore[union-attr]


async def test_concurrent_enrollments_leave_exactly_one_active_device(store: Store) -> None:
    for n in range(10):
        await store.create_enrollment(enrollment(f"e{n}", "alice"), code(n))
    revoked: list[Device] = []

    async def complete(n: int) -> None:
        _, old = await store.complete_enrollment(code(n), device(f"d{n}"), NOW + n)
        if old is not None:
            revoked.append(old)

    async with trio.open_nursery() as nursery:
        for n in range(10):
            nursery.start_soon(complete, n)

    # Every completion but the first revoked the device before it, exactly once.
    assert len(revoked) == 9
    assert len({d.device_id for d in revoked}) == 9
    active = await store.active_device_for_user("alice")
    assert active is not None
    assert active.device_id not in {d.device_id for d in revoked}
    devices = [await store.get_device(f"d{n}") for n in range(10)]
    assert sum(1 for d in devices if d is not None and d.active) == 1


async def test_revoking_a_device_happens_once(store: Store) -> None:
    dev = await enroll(store, "alice", "d1", 1)
    note = [AuditEntry(at=NOW + 9, kind="device.revoked", user_id="alice", device_id="d1")]

    revoked = await store.revoke_device("d1", NOW + 9, note)
    again = await store.revoke_device("d1", NOW + 10, note)

    assert revoked == dataclasses.replace(dev, revoked_at=NOW + 9)
    assert again is None
    assert await store.revoke_device("unknown", NOW, note) is None
    assert await store.get_device("d1") == revoked
    assert await store.active_device_for_user("alice") is None
    assert len(await store.query_audit(kind="device.revoked")) == 1


async def test_push_token_and_last_seen_are_updated(store: Store) -> None:
    await enroll(store, "alice", "d1", 1)

    await store.update_push_token("d1", "fresh-token")
    await store.touch_device("d1", NOW + 100)
    dev = await store.get_device("d1")
    assert dev is not None and (dev.push_token, dev.last_seen) == ("fresh-token", NOW + 100)

    await store.update_push_token("d1", None)
    await store.touch_device("d1", NOW + 200)
    dev = await store.get_device("d1")
    assert dev is not None and (dev.push_token, dev.last_seen) == (None, NOW + 200)


# -- challenges --------------------------------------------------------------


async def test_a_challenge_round_trips_every_field(store: Store) -> None:
    dev = await enroll(store, "alice", "d1", 1)
    full = Challenge(
        challenge_id="c-full",
        user_id="alice",
        device_id="d1",
        resource_kind=ResourceKind.PASSWORD_RESET,
        resource_name="mail.example.org",
        context={"app": "Mail", "ip": "2001:db8::1", "location": {"city": "Zürich", "lat": 47.37}},
        created_at=NOW,
        expires_at=NOW + MINUTE,
        context_hash="abc123",
        require_biometric=True,
        match=MatchMode.CHOOSE,
        match_code="42",
        choices=("17", "42", "93"),
        status=ChallengeStatus.DENIED,
        decided_at=NOW + 3,
        biometric=False,
        fraud=True,
        reason="user",
        delivery=Delivery(channel="apns", sent_at=NOW + 1, delivered_at=NOW + 2, shown_at=NOW + 3),
    )
    plain = challenge("c-plain", dev)

    await store.create_challenge(full)
    await store.create_challenge(plain)

    assert await store.get_challenge("c-full") == full
    got = await store.get_challenge("c-plain")
    assert got == plain
    assert got is not None and got.choices is None and got.biometric is None
    assert got.delivery == Delivery()
    assert await store.get_challenge("unknown") is None


async def test_the_first_of_concurrent_decisions_wins(store: Store) -> None:
    dev = await enroll(store, "alice", "d1", 1)
    await store.create_challenge(challenge("c1", dev))
    winners: list[Challenge] = []

    async def decide(n: int) -> None:
        status = ChallengeStatus.APPROVED if n % 2 else ChallengeStatus.DENIED
        decision = Decision(status=status, decided_at=NOW + n, reason=f"attempt-{n}")
        note = AuditEntry(at=NOW + n, kind="challenge.decided", challenge_id="c1", detail={"n": n})
        result = await store.decide_challenge("c1", decision, [note])
        if result is not None:
            winners.append(result)

    async with trio.open_nursery() as nursery:
        for n in range(20):
            nursery.start_soon(decide, n)

    assert len(winners) == 1
    (winner,) = winners
    assert await store.get_challenge("c1") == winner
    n = int(winner.reason.removeprefix("attempt-"))  # type: ignore[union-attr]
    assert winner.decided_at == NOW + n
    # Only the winner's audit entry was written: losers wrote none.
    decided = await store.query_audit(challenge_id="c1")
    assert [r.detail for r in decided] == [{"n": n}]


async def test_a_decision_sets_its_fields_and_nothing_else(store: Store) -> None:
    dev = await enroll(store, "alice", "d1", 1)
    original = challenge("c1", dev)
    await store.create_challenge(original)
    decision = Decision(
        status=ChallengeStatus.DENIED,
        decided_at=NOW + 5,
        reason="match_failed",
        biometric=False,
        fraud=True,
    )

    decided = await store.decide_challenge("c1", decision)

    assert decided == dataclasses.replace(
        original,
        status=ChallengeStatus.DENIED,
        decided_at=NOW + 5,
        reason="match_failed",
        biometric=False,
        fraud=True,
    )
    assert await store.decide_challenge("c1", approve()) is None
    assert await store.get_challenge("c1") == decided
    assert await store.decide_challenge("unknown", approve()) is None


async def test_delivery_times_are_kept_from_the_first_report(store: Store) -> None:
    dev = await enroll(store, "alice", "d1", 1)
    await store.create_challenge(challenge("c1", dev))

    await store.record_delivery("c1", channel="websocket", sent_at=NOW + 1)
    await store.record_delivery("c1", channel="fcm", sent_at=NOW + 50, delivered_at=NOW + 2)
    await store.record_delivery("c1", delivered_at=NOW + 60)

    got = await store.get_challenge("c1")
    assert got is not None
    assert got.delivery == Delivery(channel="websocket", sent_at=NOW + 1, delivered_at=NOW + 2)

    await store.record_delivery("c1", shown_at=NOW + 3)
    got = await store.get_challenge("c1")
    assert got is not None and got.delivery.shown_at == NOW + 3


async def test_queued_delivery_times_are_durable_once_a_later_write_returns(
    store_factory: StoreFactory,
) -> None:
    async with store_factory() as store:
        dev = await enroll(store, "alice", "d1", 1)
        await store.create_challenge(challenge("c1", dev))
        store.record_delivery_soon("c1", channel="websocket", sent_at=NOW + 1)
        store.record_delivery_soon("c1", delivered_at=NOW + 2, shown_at=NOW + 3)
        # Queued behind the delivery updates: when it returns, they are committed.
        await store.decide_challenge("c1", approve())
        got = await store.get_challenge("c1")
        assert got is not None
        assert got.delivery == Delivery("websocket", NOW + 1, NOW + 2, NOW + 3)
        store.record_delivery_soon("c2-unknown", sent_at=NOW)  # no such challenge: nothing happens
    async with store_factory() as store:
        got = await store.get_challenge("c1")
        assert got is not None and got.delivery.shown_at == NOW + 3
        assert await store.get_challenge("c2-unknown") is None


async def test_open_challenges_are_the_devices_pending_unexpired_ones_oldest_first(
    store: Store,
) -> None:
    d1 = await enroll(store, "alice", "d1", 1)
    d2 = await enroll(store, "bob", "d2", 2)
    now = NOW + 10_000
    # Created out of order, to show the result is ordered by age.
    await store.create_challenge(
        challenge("newer", d1, created_at=NOW + 2, expires_at=now + MINUTE)
    )
    await store.create_challenge(challenge("older", d1, created_at=NOW + 1, expires_at=now + 1))
    await store.create_challenge(challenge("expired", d1, created_at=NOW, expires_at=now))
    await store.create_challenge(challenge("decided", d1, created_at=NOW, expires_at=now + MINUTE))
    await store.create_challenge(challenge("other-device", d2, expires_at=now + MINUTE))
    await store.decide_challenge("decided", approve())

    open_ = await store.open_challenges_for_device("d1", now)

    assert [c.challenge_id for c in open_] == ["older", "newer"]
    assert open_[0] == challenge("older", d1, created_at=NOW + 1, expires_at=now + 1)
    assert await store.open_challenges_for_device("d-none", now) == []


async def test_challenges_of_one_millisecond_come_in_the_order_they_were_created(store: Store) -> None:
    d1 = await enroll(store, "alice", "d1", 1)
    ids = ["m", "b", "z", "a", "k"]  # not in any sort order of their own
    for cid in ids:
        await store.create_challenge(challenge(cid, d1, created_at=NOW))
    assert [c.challenge_id for c in await store.open_challenges_for_device("d1", NOW)] == ids
    assert [c.challenge_id for c in await store.pending_challenges()] == ids


async def test_pending_challenges_include_expired_but_not_decided_ones(store: Store) -> None:
    d1 = await enroll(store, "alice", "d1", 1)
    d2 = await enroll(store, "bob", "d2", 2)
    await store.create_challenge(challenge("a", d1, created_at=NOW + 2))
    await store.create_challenge(challenge("b-expired", d2, created_at=NOW + 1, expires_at=NOW + 1))
    await store.create_challenge(challenge("c-decided", d1, created_at=NOW))
    await store.decide_challenge("c-decided", approve())

    pending = await store.pending_challenges()

    assert [c.challenge_id for c in pending] == ["b-expired", "a"]
    assert all(c.status is ChallengeStatus.PENDING for c in pending)


# -- policy ------------------------------------------------------------------


async def test_policy_changes_merge_key_by_key(store: Store) -> None:
    assert await store.load_policy() == {}

    await store.save_policy({"max_open": 3, "guard": {"window_s": 3600, "kinds": ["login"]}})
    await store.save_policy({"max_open": 5, "suspend_after_denies": None})

    assert await store.load_policy() == {
        "max_open": 5,
        "guard": {"window_s": 3600, "kinds": ["login"]},
        "suspend_after_denies": None,
    }


async def test_saving_policy_writes_its_audit(store: Store) -> None:
    note = AuditEntry(at=NOW, kind="policy.changed", detail={"max_open": 5})
    await store.save_policy({"max_open": 5}, [note])

    (record,) = await store.query_audit(kind="policy.changed")
    assert (record.at, record.detail) == (NOW, {"max_open": 5})


# -- audit -------------------------------------------------------------------


def audit_entries() -> list[AuditEntry]:
    return [
        AuditEntry(at=NOW, kind="enrollment.started", user_id="alice"),
        AuditEntry(at=NOW + 1, kind="enrollment.completed", user_id="alice", device_id="d1"),
        AuditEntry(
            at=NOW + 2, kind="challenge.created", user_id="alice", device_id="d1", challenge_id="c1"
        ),
        AuditEntry(
            at=NOW + 3,
            kind="challenge.decided",
            user_id="alice",
            device_id="d1",
            challenge_id="c1",
            detail={"status": "approved", "biometric": True},
        ),
        AuditEntry(at=NOW + 4, kind="challenge", user_id="bob"),
        AuditEntry(at=NOW + 5, kind="challenges.purged"),
        AuditEntry(
            at=NOW + 6, kind="guard.blocked", user_id="bob", detail={"reason": "open_limit"}
        ),
    ]


async def test_audit_records_come_back_in_order_with_every_field(store: Store) -> None:
    entries = audit_entries()
    await store.append_audit(entries[:3])
    await store.append_audit([])
    await store.append_audit(entries[3:])

    records = await store.query_audit()

    seqs = [r.seq for r in records]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(entries)
    as_entries = [
        AuditEntry(
            at=r.at,
            kind=r.kind,
            user_id=r.user_id,
            device_id=r.device_id,
            challenge_id=r.challenge_id,
            detail=r.detail,
        )
        for r in records
    ]
    assert as_entries == entries


async def test_audit_filters(store: Store) -> None:
    await store.append_audit(audit_entries())

    async def kinds(**filters: object) -> list[str]:
        return [r.kind for r in await store.query_audit(**filters)]  # type: ignore[arg-type]

    assert await kinds(user_id="bob") == ["challenge", "guard.blocked"]
    assert await kinds(device_id="d1") == [
        "enrollment.completed",
        "challenge.created",
        "challenge.decided",
    ]
    assert await kinds(challenge_id="c1") == ["challenge.created", "challenge.decided"]
    assert await kinds(kind="challenge") == ["challenge"]  # exact, not a prefix
    assert await kinds(kind="challenge.") == ["challenge.created", "challenge.decided"]
    assert await kinds(kind="enrollment.started") == ["enrollment.started"]
    assert await kinds(since_ms=NOW + 5) == ["challenges.purged", "guard.blocked"]  # inclusive
    assert await kinds(user_id="alice", kind="challenge.", since_ms=NOW + 3) == [
        "challenge.decided"
    ]
    assert await kinds(user_id="nobody") == []


async def test_audit_pages_with_after_seq_and_limit(store: Store) -> None:
    entries = audit_entries()
    await store.append_audit(entries)

    pages: list[list[str]] = []
    after: int | None = None
    while page := await store.query_audit(after_seq=after, limit=3):
        pages.append([r.kind for r in page])
        after = page[-1].seq

    assert pages == [
        [e.kind for e in entries[0:3]],
        [e.kind for e in entries[3:6]],
        [e.kind for e in entries[6:]],
    ]


async def test_audit_queries_return_at_most_a_thousand_records(store: Store) -> None:
    await store.append_audit([AuditEntry(at=NOW + i, kind="load.test") for i in range(1_005)])

    records = await store.query_audit(limit=5_000)

    assert len(records) == 1_000
    assert records[0].at == NOW and records[-1].at == NOW + 999


async def test_state_changes_and_their_audit_are_written_together(store: Store) -> None:
    start = AuditEntry(at=NOW, kind="enrollment.started", user_id="alice")
    await store.create_enrollment(enrollment("e1", "alice"), code(1), [start])
    done = AuditEntry(at=NOW + 1, kind="enrollment.completed", user_id="alice", device_id="d1")
    await store.complete_enrollment(code(1), device("d1"), NOW + 1, [done])
    rejected = AuditEntry(at=NOW + 2, kind="enrollment.completed", user_id="alice", device_id="d2")
    with pytest.raises(EnrollmentRejected):
        await store.complete_enrollment(code(1), device("d2"), NOW + 2, [rejected])
    dev = await store.get_device("d1")
    assert dev is not None
    created = AuditEntry(at=NOW + 3, kind="challenge.created", challenge_id="c1")
    await store.create_challenge(challenge("c1", dev), [created])
    won = AuditEntry(at=NOW + 4, kind="challenge.decided", challenge_id="c1", detail={"won": True})
    lost = AuditEntry(
        at=NOW + 5, kind="challenge.decided", challenge_id="c1", detail={"won": False}
    )
    assert await store.decide_challenge("c1", approve(), [won]) is not None
    assert await store.decide_challenge("c1", approve(), [lost]) is None

    records = await store.query_audit()

    assert [(r.at, r.kind, r.detail) for r in records] == [
        (NOW, "enrollment.started", {}),
        (NOW + 1, "enrollment.completed", {}),
        (NOW + 3, "challenge.created", {}),
        (NOW + 4, "challenge.decided", {"won": True}),
    ]


async def test_audit_of_a_device_or_challenge_is_attributed_to_its_user(store: Store) -> None:
    await store.create_enrollment(enrollment("e1", "alice"), code(1))
    enrolled = AuditEntry(at=NOW + 1, kind="device.enrolled", device_id="d1")
    await store.complete_enrollment(code(1), device("d1"), NOW + 1, [enrolled])
    dev = await store.get_device("d1")
    assert dev is not None
    await store.create_challenge(challenge("c1", dev))
    decided = AuditEntry(at=NOW + 2, kind="challenge.decided", challenge_id="c1")
    await store.decide_challenge("c1", approve(), [decided])
    revoked = AuditEntry(at=NOW + 3, kind="device.revoked", device_id="d1")
    await store.revoke_device("d1", NOW + 3, [revoked])

    records = await store.query_audit(user_id="alice")

    assert [(r.kind, r.user_id, r.device_id) for r in records] == [
        ("device.enrolled", "alice", "d1"),
        ("challenge.decided", "alice", "d1"),
        ("device.revoked", "alice", "d1"),
    ]


# -- durability --------------------------------------------------------------


async def test_everything_survives_a_restart(store_factory: StoreFactory) -> None:
    async with store_factory() as store:
        first = await enroll(store, "alice", "d1", 1)
        await store.create_enrollment(enrollment("e2", "alice"), code(2))
        _, revoked = await store.complete_enrollment(code(2), device("d2"), NOW + 1)
        await store.create_enrollment(enrollment("e3", "bob"), code(3))  # left pending
        d2 = await store.get_device("d2")
        assert d2 is not None
        await store.touch_device("d2", NOW + 2)
        await store.create_challenge(challenge("c-open", d2, created_at=NOW + 3))
        await store.create_challenge(challenge("c-done", d2, created_at=NOW + 4))
        decided = await store.decide_challenge("c-done", approve(NOW + 5))
        await store.record_delivery("c-open", channel="websocket", sent_at=NOW + 6)
        await store.save_policy({"max_open": 2})
        await store.append_audit(
            [AuditEntry(at=NOW + 7, kind="node.stopping", detail={"why": "test"})]
        )
        before = {
            "enrollments": [await store.get_enrollment(e, NOW) for e in ("enr-1", "e2", "e3")],
            "devices": [await store.get_device("d1"), await store.get_device("d2")],
            "active": await store.active_device_for_user("alice"),
            "challenges": [
                await store.get_challenge("c-open"),
                await store.get_challenge("c-done"),
            ],
            "pending": await store.pending_challenges(),
            "policy": await store.load_policy(),
            "audit": await store.query_audit(),
        }

    async with store_factory() as store:
        after = {
            "enrollments": [await store.get_enrollment(e, NOW) for e in ("enr-1", "e2", "e3")],
            "devices": [await store.get_device("d1"), await store.get_device("d2")],
            "active": await store.active_device_for_user("alice"),
            "challenges": [
                await store.get_challenge("c-open"),
                await store.get_challenge("c-done"),
            ],
            "pending": await store.pending_challenges(),
            "policy": await store.load_policy(),
            "audit": await store.query_audit(),
        }
        # The reopened store keeps working where the old one stopped.
        assert await store.decide_challenge("c-done", approve()) is None
        await store.append_audit([AuditEntry(at=NOW + 8, kind="node.started")])
        audit = await store.query_audit()

    assert after == before
    assert [e.status for e in after["enrollments"]] == [
        EnrollmentStatus.COMPLETED,
        EnrollmentStatus.COMPLETED,
        EnrollmentStatus.PENDING,
    ]
    assert after["active"] == dataclasses.replace(d2, last_seen=NOW + 2)
    assert revoked == dataclasses.replace(first, revoked_at=NOW + 1)
    assert after["devices"] == [revoked, dataclasses.replace(d2, last_seen=NOW + 2)]
    assert after["challenges"][1] == decided
    assert after["challenges"][0].delivery.channel == "websocket"
    assert [c.challenge_id for c in after["pending"]] == ["c-open"]
    assert after["policy"] == {"max_open": 2}
    assert after["audit"][-1].detail == {"why": "test"}
    assert audit[-1].kind == "node.started" and audit[-1].seq > audit[-2].seq
