"""The SQLite store's tables as Python sees them: columns, rows <-> records, write operations.

The write operations are module-level functions of the writer connection,
run in the writer process (engine/store/sqlite_writer.py), which imports
this module to unpickle them: so nothing here imports Trio, and the process
starts quickly. Schema and migrations: engine/store/sqlite_schema.py.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from typing import Any

from engine.models import (
    Challenge,
    ChallengeStatus,
    Delivery,
    Device,
    Enrollment,
    EnrollmentStatus,
    MatchMode,
    Platform,
    ResourceKind,
)
from engine.store.base import EnrollmentRejected
from engine.store.sqlite_audit import AuditRow, attributed, insert_audit, json_text

DEVICE_COLUMNS = (
    "device_id, user_id, public_key, platform, push_token, device_name,"
    " app_version, enrolled_at, revoked_at, last_seen"
)
ENROLLMENT_COLUMNS = "enrollment_id, user_id, created_at, expires_at, status, device_id"
CHALLENGE_COLUMNS = (
    "challenge_id, user_id, device_id, resource_kind, resource_name, context,"
    " created_at, expires_at, context_hash, require_biometric, match_mode, match_code,"
    " choices, status, decided_at, biometric, fraud, reason, delivery_channel,"
    " delivery_sent_at, delivery_delivered_at, delivery_shown_at"
)

SELECT_DEVICE = f"SELECT {DEVICE_COLUMNS} FROM devices WHERE device_id = ?"
SELECT_CHALLENGE = f"SELECT {CHALLENGE_COLUMNS} FROM challenges WHERE challenge_id = ?"



# -- write operations -----------------------------------------------------------------


def update_push_token(conn: sqlite3.Connection, device_id: str, push_token: str | None) -> None:
    conn.execute("UPDATE devices SET push_token = ? WHERE device_id = ?", (push_token, device_id))


def touch_device(conn: sqlite3.Connection, device_id: str, last_seen_ms: int) -> None:
    conn.execute(
        "UPDATE devices SET last_seen = ? WHERE device_id = ? AND (last_seen IS NULL OR last_seen < ?)",
        (last_seen_ms, device_id, last_seen_ms),
    )


def record_delivery(conn: sqlite3.Connection, params: tuple[Any, ...]) -> None:
    """Delivery times, each kept once set: params are channel, sent_at,
    delivered_at, shown_at and the challenge id."""
    conn.execute(
        "UPDATE challenges SET"
        " delivery_channel = COALESCE(delivery_channel, ?),"
        " delivery_sent_at = COALESCE(delivery_sent_at, ?),"
        " delivery_delivered_at = COALESCE(delivery_delivered_at, ?),"
        " delivery_shown_at = COALESCE(delivery_shown_at, ?)"
        " WHERE challenge_id = ?",
        params,
    )


def create_enrollment(conn: sqlite3.Connection, params: tuple[Any, ...], entries: list[AuditRow]) -> None:
    conn.execute(
        f"INSERT INTO enrollments ({ENROLLMENT_COLUMNS}, code_hash) VALUES (?, ?, ?, ?, ?, ?, ?)", params
    )
    insert_audit(conn, entries)


def complete_enrollment(
    conn: sqlite3.Connection, code_hash: bytes, device: Device, now_ms: int, entries: list[AuditRow]
) -> tuple[Enrollment, Device | None]:
    row = conn.execute(
        f"SELECT {ENROLLMENT_COLUMNS} FROM enrollments WHERE code_hash = ?", (code_hash,)
    ).fetchone()
    if row is None:
        raise EnrollmentRejected("unknown enrollment code")
    enrollment = enrollment_from(row)
    if enrollment.status is not EnrollmentStatus.PENDING:
        raise EnrollmentRejected("enrollment code already used")
    if enrollment.expires_at <= now_ms:
        raise EnrollmentRejected("enrollment code expired")
    user_id = enrollment.user_id
    conn.execute(
        "INSERT INTO users (user_id, created_at) VALUES (?, ?)"
        " ON CONFLICT (user_id) DO NOTHING",
        (user_id, now_ms),
    )
    old = conn.execute(
        f"SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = ? AND revoked_at IS NULL",
        (user_id,),
    ).fetchone()
    revoked = None
    if old is not None:
        revoked = replace(device_from(old), revoked_at=now_ms)
        conn.execute(
            "UPDATE devices SET revoked_at = ? WHERE device_id = ?",
            (now_ms, revoked.device_id),
        )
    new = replace(device, user_id=user_id)
    conn.execute(
        f"INSERT INTO devices ({DEVICE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        device_params(new),
    )
    conn.execute(
        "UPDATE enrollments SET status = ?, device_id = ? WHERE enrollment_id = ?",
        (str(EnrollmentStatus.COMPLETED), new.device_id, enrollment.enrollment_id),
    )
    insert_audit(conn, attributed(entries, user_id, new.device_id))
    completed = replace(
        enrollment, status=EnrollmentStatus.COMPLETED, device_id=new.device_id
    )
    return completed, revoked


def revoke_device(conn: sqlite3.Connection, device_id: str, now_ms: int, entries: list[AuditRow]) -> Device | None:
    cursor = conn.execute(
        "UPDATE devices SET revoked_at = ? WHERE device_id = ? AND revoked_at IS NULL",
        (now_ms, device_id),
    )
    if cursor.rowcount != 1:
        return None
    revoked = device_from(conn.execute(SELECT_DEVICE, (device_id,)).fetchone())
    insert_audit(conn, attributed(entries, revoked.user_id, device_id))
    return revoked


def create_challenge(conn: sqlite3.Connection, params: tuple[Any, ...], entries: list[AuditRow]) -> None:
    conn.execute(
        f"INSERT INTO challenges ({CHALLENGE_COLUMNS}) VALUES ({', '.join('?' * len(params))})", params
    )
    insert_audit(conn, entries)


def decide_challenge(conn: sqlite3.Connection, params: tuple[Any, ...], entries: list[AuditRow]) -> Challenge | None:
    cursor = conn.execute(
        "UPDATE challenges SET status = ?, decided_at = ?, reason = ?, biometric = ?, fraud = ?"
        " WHERE challenge_id = ? AND status = 'pending'",
        params,
    )
    if cursor.rowcount != 1:
        return None
    decided = challenge_from(conn.execute(SELECT_CHALLENGE, (params[-1],)).fetchone())
    insert_audit(conn, attributed(entries, decided.user_id, decided.device_id))
    return decided


def save_policy(conn: sqlite3.Connection, pairs: list[tuple[str, str]], entries: list[AuditRow]) -> None:
    conn.executemany(
        "INSERT INTO policy (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        pairs,
    )
    insert_audit(conn, entries)


def optional_bool(value: int | None) -> bool | None:
    return None if value is None else bool(value)


def enrollment_from(row: sqlite3.Row) -> Enrollment:
    return Enrollment(
        enrollment_id=row["enrollment_id"],
        user_id=row["user_id"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        status=EnrollmentStatus(row["status"]),
        device_id=row["device_id"],
    )


def device_params(device: Device) -> tuple[Any, ...]:
    return (
        device.device_id,
        device.user_id,
        bytes(device.public_key),
        str(device.platform),
        device.push_token,
        device.device_name,
        device.app_version,
        device.enrolled_at,
        device.revoked_at,
        device.last_seen,
    )


def device_from(row: sqlite3.Row) -> Device:
    return Device(
        device_id=row["device_id"],
        user_id=row["user_id"],
        public_key=bytes(row["public_key"]),
        platform=Platform(row["platform"]),
        enrolled_at=row["enrolled_at"],
        push_token=row["push_token"],
        device_name=row["device_name"],
        app_version=row["app_version"],
        revoked_at=row["revoked_at"],
        last_seen=row["last_seen"],
    )


def challenge_params(c: Challenge) -> tuple[Any, ...]:
    """The row for `c`, in the order of CHALLENGE_COLUMNS."""
    return (
        c.challenge_id,
        c.user_id,
        c.device_id,
        str(c.resource_kind),
        c.resource_name,
        json_text(c.context),
        c.created_at,
        c.expires_at,
        c.context_hash,
        int(c.require_biometric),
        str(c.match),
        c.match_code,
        None if c.choices is None else json_text(list(c.choices)),
        str(c.status),
        c.decided_at,
        None if c.biometric is None else int(c.biometric),
        int(c.fraud),
        c.reason,
        c.delivery.channel,
        c.delivery.sent_at,
        c.delivery.delivered_at,
        c.delivery.shown_at,
    )


def challenge_from(row: sqlite3.Row) -> Challenge:
    choices = row["choices"]
    return Challenge(
        challenge_id=row["challenge_id"],
        user_id=row["user_id"],
        device_id=row["device_id"],
        resource_kind=ResourceKind(row["resource_kind"]),
        resource_name=row["resource_name"],
        context=json.loads(row["context"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        context_hash=row["context_hash"],
        require_biometric=bool(row["require_biometric"]),
        match=MatchMode(row["match_mode"]),
        match_code=row["match_code"],
        choices=None if choices is None else tuple(json.loads(choices)),
        status=ChallengeStatus(row["status"]),
        decided_at=row["decided_at"],
        biometric=optional_bool(row["biometric"]),
        fraud=bool(row["fraud"]),
        reason=row["reason"],
        delivery=Delivery(
            channel=row["delivery_channel"],
            sent_at=row["delivery_sent_at"],
            delivered_at=row["delivery_delivered_at"],
            shown_at=row["delivery_shown_at"],
        ),
    )
