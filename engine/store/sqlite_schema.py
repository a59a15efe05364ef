"""The SQLite store's schema, its migrations, and how its connections are opened.

The node opens the database here, brings the schema up to date and opens
its read connection; the writer process (engine/store/sqlite_writer.py)
opens its own connection to the same file.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from engine.store.sqlite_totp import TOTP_MIGRATION

BUSY_TIMEOUT_MS = 5_000  # another process holding the write lock: wait this long, then fail

# Migration N (1-based) takes a database from `PRAGMA user_version` N-1 to N.
# Append new migrations; never edit one that has shipped.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE users (
            user_id    TEXT PRIMARY KEY,
            created_at INTEGER NOT NULL
        )""",
        """CREATE TABLE devices (
            device_id   TEXT PRIMARY KEY,
            user_id     TEXT NOT NULL REFERENCES users (user_id),
            public_key  BLOB NOT NULL,
            platform    TEXT NOT NULL,
            push_token  TEXT,
            device_name TEXT,
            app_version TEXT,
            enrolled_at INTEGER NOT NULL,
            revoked_at  INTEGER,
            last_seen   INTEGER
        )""",
        # The database itself guarantees at most one active device per user.
        """CREATE UNIQUE INDEX devices_one_active_per_user
            ON devices (user_id) WHERE revoked_at IS NULL""",
        # No foreign key on user_id: a user exists once a device is enrolled.
        """CREATE TABLE enrollments (
            enrollment_id TEXT PRIMARY KEY,
            user_id       TEXT NOT NULL,
            code_hash     BLOB NOT NULL UNIQUE,
            created_at    INTEGER NOT NULL,
            expires_at    INTEGER NOT NULL,
            status        TEXT NOT NULL,
            device_id     TEXT REFERENCES devices (device_id)
        )""",
        """CREATE TABLE challenges (
            challenge_id          TEXT PRIMARY KEY,
            user_id               TEXT NOT NULL REFERENCES users (user_id),
            device_id             TEXT NOT NULL REFERENCES devices (device_id),
            resource_kind         TEXT NOT NULL,
            resource_name         TEXT NOT NULL,
            context               TEXT NOT NULL,
            created_at            INTEGER NOT NULL,
            expires_at            INTEGER NOT NULL,
            context_hash          TEXT NOT NULL,
            require_biometric     INTEGER NOT NULL,
            match_mode            TEXT NOT NULL,
            match_code            TEXT,
            choices               TEXT,
            status                TEXT NOT NULL,
            decided_at            INTEGER,
            biometric             INTEGER,
            fraud                 INTEGER NOT NULL,
            reason                TEXT,
            delivery_channel      TEXT,
            delivery_sent_at      INTEGER,
            delivery_delivered_at INTEGER,
            delivery_shown_at     INTEGER
        )""",
        """CREATE INDEX challenges_pending_by_device
            ON challenges (device_id, created_at) WHERE status = 'pending'""",
        """CREATE TABLE policy (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        )""",
        # AUTOINCREMENT: a sequence number is never reused, even after a crash
        # that lost the highest rows, so `after_seq` paging cannot skip records.
        """CREATE TABLE audit (
            seq          INTEGER PRIMARY KEY AUTOINCREMENT,
            at           INTEGER NOT NULL,
            kind         TEXT NOT NULL,
            user_id      TEXT,
            device_id    TEXT,
            challenge_id TEXT,
            detail       TEXT NOT NULL
        )""",
        "CREATE INDEX audit_by_user ON audit (user_id)",
        "CREATE INDEX audit_by_device ON audit (device_id)",
        "CREATE INDEX audit_by_challenge ON audit (challenge_id)",
        "CREATE INDEX audit_by_kind ON audit (kind)",
        # Append-only is enforced where it cannot be bypassed by a code path.
        """CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
            BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
        """CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
            BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
    ),
    TOTP_MIGRATION,
)
SCHEMA_VERSION = len(MIGRATIONS)


def connect_reader(path: Path) -> sqlite3.Connection:
    """Bring the database up to date (WAL, schema) and open the read-only connection."""
    path.parent.mkdir(parents=True, exist_ok=True)
    setup = open_connection(path)
    try:
        journal = setup.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(journal).lower() != "wal":
            raise RuntimeError(f"{path}: SQLite refused WAL journal mode (got {journal!r})")
        _migrate(setup, path)
        reader = open_connection(path)
        try:
            reader.execute("PRAGMA query_only = ON")
            # It never sleeps in SQLite's busy handler on the Trio thread: see SqliteStore._read.
            reader.execute("PRAGMA busy_timeout = 0")
        except BaseException:
            reader.close()
            raise
    finally:
        setup.close()
    return reader


def open_connection(path: Path, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> sqlite3.Connection:
    """A connection as every part of the store wants it: rows by name, foreign keys on.

    isolation_level=None: the store issues BEGIN and COMMIT itself.
    check_same_thread is off because the read connection may serve a worker
    thread when it must wait (SqliteStore._read), one at a time.
    """
    conn = sqlite3.connect(
        path, timeout=busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False
    )
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Apply the migrations the database lacks, all in one transaction."""
    conn.execute("BEGIN IMMEDIATE")  # re-read the version under the write lock
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{path}: schema version {version} is newer than this pushguard's"
                f" ({SCHEMA_VERSION})"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[target - 1]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {target}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


# -- records <-> rows -------------------------------------------------------
