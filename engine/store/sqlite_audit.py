"""Audit rows on SQLite: how every SQLite table module writes and reads the audit log.

Each mutating operation inserts its audit rows in its own transaction, so the
helpers here are shared by engine/store/sqlite.py and the table modules beside it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from engine.models import AuditEntry, AuditRecord

AUDIT_COLUMNS = "seq, at, kind, user_id, device_id, challenge_id, detail"
_INSERT_AUDIT = (
    "INSERT INTO audit (at, kind, user_id, device_id, challenge_id, detail)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)

AuditRow = tuple[int, str, str | None, str | None, str | None, str]


def json_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def audit_rows(entries: Sequence[AuditEntry]) -> list[AuditRow]:
    # Encoded by the caller, so that bad detail fails there and not in the batch.
    return [
        (e.at, e.kind, e.user_id, e.device_id, e.challenge_id, json_text(e.detail)) for e in entries
    ]


def attributed(rows: list[AuditRow], user_id: str | None, device_id: str | None) -> list[AuditRow]:
    """The rows, with the user and device filled in where the caller left them empty."""
    return [(at, kind, u or user_id, d or device_id, c, detail) for at, kind, u, d, c, detail in rows]


def insert_audit(conn: sqlite3.Connection, rows: list[AuditRow]) -> None:
    if rows:
        conn.executemany(_INSERT_AUDIT, rows)


def audit_record(row: sqlite3.Row) -> AuditRecord:
    return AuditRecord(
        seq=row["seq"],
        at=row["at"],
        kind=row["kind"],
        user_id=row["user_id"],
        device_id=row["device_id"],
        challenge_id=row["challenge_id"],
        detail=json.loads(row["detail"]),
    )
