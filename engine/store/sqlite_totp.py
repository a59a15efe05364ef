"""The TOTP part of the SQLite store: sealed secrets and the throttle.

It writes through the store's group-committed writer and reads on its read
connection, so a TOTP verification costs one read and one write like any other
store call. Schema: `TOTP_MIGRATION`, applied by engine/store/sqlite_schema.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from engine.models import AuditEntry, TotpLockout, TotpRecord, TotpSecret
from engine.store.sqlite_audit import AuditRow, audit_rows, insert_audit
from engine.totp.codes import TotpParams

T = TypeVar("T")

TOTP_MIGRATION: tuple[str, ...] = (
    # Two slots per user: the confirmed secret, and the one waiting for
    # totp.confirm (a new enrollment or a reset) that will replace it.
    """CREATE TABLE totp_secrets (
        user_id      TEXT NOT NULL,
        slot         TEXT NOT NULL CHECK (slot IN ('active', 'pending')),
        secret_id    TEXT NOT NULL UNIQUE,
        sealed       BLOB NOT NULL,
        digits       INTEGER NOT NULL,
        period       INTEGER NOT NULL,
        algorithm    TEXT NOT NULL,
        issuer       TEXT NOT NULL,
        label        TEXT NOT NULL,
        created_at   INTEGER NOT NULL,
        confirmed_at INTEGER,
        last_step    INTEGER NOT NULL,
        PRIMARY KEY (user_id, slot)
    )""",
    # Apart from the secrets, so that neither a new enrollment nor a removal
    # resets a user's failure count.
    """CREATE TABLE totp_throttle (
        user_id      TEXT PRIMARY KEY,
        failures     INTEGER NOT NULL,
        locked_until INTEGER,
        last_used_at INTEGER
    )""",
)

_SECRET_COLUMNS = (
    "secret_id, sealed, digits, period, algorithm, issuer, label, created_at, confirmed_at, last_step"
)
_RESET_THROTTLE = (
    "INSERT INTO totp_throttle (user_id, failures, locked_until, last_used_at) VALUES (?, 0, NULL, ?)"
    " ON CONFLICT (user_id) DO UPDATE SET failures = 0, locked_until = NULL,"
    " last_used_at = excluded.last_used_at"
)


class _Engine(Protocol):
    """What this module needs of the SQLite store."""

    def _write(self, run: Callable[..., T], *args: Any) -> Awaitable[T]: ...

    def _read(self, query: Callable[[sqlite3.Connection], T]) -> Awaitable[T]: ...


class SqliteTotpStore:
    """`TotpStore` on the SQLite store's connections (`store.totp`)."""

    def __init__(self, engine: _Engine):
        self._engine = engine

    async def get(self, user_id: str) -> TotpRecord | None:
        def query(conn: sqlite3.Connection) -> TotpRecord | None:
            slots = {
                row["slot"]: _secret(row)
                for row in conn.execute(
                    f"SELECT slot, {_SECRET_COLUMNS} FROM totp_secrets WHERE user_id = ?", (user_id,))
            }
            throttle = conn.execute(
                "SELECT failures, locked_until, last_used_at FROM totp_throttle WHERE user_id = ?",
                (user_id,)).fetchone()
            if not slots and throttle is None:
                return None
            return TotpRecord(
                user_id=user_id,
                active=slots.get("active"),
                pending=slots.get("pending"),
                failures=throttle["failures"] if throttle else 0,
                locked_until=throttle["locked_until"] if throttle else None,
                last_used_at=throttle["last_used_at"] if throttle else None,
            )

        return await self._engine._read(query)

    async def put_pending(self, user_id: str, secret: TotpSecret, audit: Sequence[AuditEntry] = ()) -> None:
        await self._engine._write(_put_pending, user_id, (user_id, *_secret_params(secret)), audit_rows(audit))

    async def confirm(
        self, user_id: str, secret_id: str, step: int, now_ms: int, audit: Sequence[AuditEntry] = ()
    ) -> bool:
        return await self._engine._write(_confirm, user_id, secret_id, step, now_ms, audit_rows(audit))

    async def use_step(
        self, user_id: str, secret_id: str, step: int, now_ms: int, audit: Sequence[AuditEntry] = ()
    ) -> bool:
        return await self._engine._write(_use_step, user_id, secret_id, step, now_ms, audit_rows(audit))

    async def record_failure(
        self, user_id: str, now_ms: int, lockout: TotpLockout, audit: Sequence[AuditEntry] = ()
    ) -> tuple[int, int | None]:
        return await self._engine._write(_record_failure, user_id, now_ms, lockout, audit_rows(audit))

    async def remove(self, user_id: str, audit: Sequence[AuditEntry] = ()) -> bool:
        return await self._engine._write(_remove, user_id, audit_rows(audit))


# -- write operations (run in the writer process: engine/store/sqlite_writer.py) --------


def _put_pending(
    conn: sqlite3.Connection, user_id: str, params: tuple[Any, ...], entries: list[AuditRow]
) -> None:
    conn.execute("DELETE FROM totp_secrets WHERE user_id = ? AND slot = 'pending'", (user_id,))
    conn.execute(
        f"INSERT INTO totp_secrets (user_id, slot, {_SECRET_COLUMNS})"
        " VALUES (?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", params)
    insert_audit(conn, entries)


def _confirm(
    conn: sqlite3.Connection, user_id: str, secret_id: str, step: int, now_ms: int, entries: list[AuditRow]
) -> bool:
    pending = conn.execute(
        "SELECT last_step FROM totp_secrets WHERE user_id = ? AND slot = 'pending' AND secret_id = ?",
        (user_id, secret_id)).fetchone()
    if pending is None or pending["last_step"] >= step:
        return False
    conn.execute("DELETE FROM totp_secrets WHERE user_id = ? AND slot = 'active'", (user_id,))
    conn.execute(
        "UPDATE totp_secrets SET slot = 'active', confirmed_at = ?, last_step = ?"
        " WHERE user_id = ? AND secret_id = ?", (now_ms, step, user_id, secret_id))
    conn.execute(_RESET_THROTTLE, (user_id, now_ms))
    insert_audit(conn, entries)
    return True


def _use_step(
    conn: sqlite3.Connection, user_id: str, secret_id: str, step: int, now_ms: int, entries: list[AuditRow]
) -> bool:
    cursor = conn.execute(
        "UPDATE totp_secrets SET last_step = ?"
        " WHERE user_id = ? AND slot = 'active' AND secret_id = ? AND last_step < ?",
        (step, user_id, secret_id, step))
    if cursor.rowcount != 1:
        return False
    conn.execute(_RESET_THROTTLE, (user_id, now_ms))
    insert_audit(conn, entries)
    return True


def _record_failure(
    conn: sqlite3.Connection, user_id: str, now_ms: int, lockout: TotpLockout, entries: list[AuditRow]
) -> tuple[int, int | None]:
    failures = conn.execute(
        "INSERT INTO totp_throttle (user_id, failures) VALUES (?, 1)"
        " ON CONFLICT (user_id) DO UPDATE SET failures = failures + 1"
        " RETURNING failures", (user_id,)).fetchone()[0]
    lock_ms = lockout.lock_ms(failures)
    until = None
    if lock_ms > 0:
        until = now_ms + lock_ms
        conn.execute("UPDATE totp_throttle SET locked_until = ? WHERE user_id = ?", (until, user_id))
        entries.extend(audit_rows([AuditEntry(now_ms, "totp.locked", user_id=user_id, detail={
            "failures": failures, "until": until, "lock_s": lock_ms // 1000})]))
    insert_audit(conn, entries)
    return failures, until


def _remove(conn: sqlite3.Connection, user_id: str, entries: list[AuditRow]) -> bool:
    removed = conn.execute("DELETE FROM totp_secrets WHERE user_id = ?", (user_id,)).rowcount > 0
    if removed:
        insert_audit(conn, entries)
    return removed


def _secret_params(secret: TotpSecret) -> tuple[Any, ...]:
    p = secret.params
    return (secret.secret_id, bytes(secret.sealed), p.digits, p.period, str(p.algorithm), secret.issuer,
            secret.label, secret.created_at, secret.confirmed_at, secret.last_step)


def _secret(row: sqlite3.Row) -> TotpSecret:
    return TotpSecret(
        secret_id=row["secret_id"],
        sealed=bytes(row["sealed"]),
        params=TotpParams(digits=row["digits"], period=row["period"], algorithm=row["algorithm"]),
        issuer=row["issuer"],
        label=row["label"],
        created_at=row["created_at"],
        confirmed_at=row["confirmed_at"],
        last_step=row["last_step"],
    )
