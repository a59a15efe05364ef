"""The durable store on SQLite: one machine, one database file.

Writes are group-committed. Every mutating call queues an operation (a
module-level function of the writer connection and its arguments) and waits;
one writer task takes whatever has queued up and sends it to the writer
process (engine/store/sqlite_writer.py), which runs it as ONE transaction,
so one fsync serves many callers. An operation that raises is undone (the
batch runs again with a SAVEPOINT around each operation) and its exception
goes to its caller alone, while the rest of the batch commits. Conditional
writes ("the first decision wins", "a code is used once") decide inside
their operation, so the check and the change are atomic. Outcomes reach
their callers only after COMMIT, so no caller acts on a write that might
still be lost.

The writer is a process, not a thread: a thread shares the GIL with a busy
event loop and loses the race for it (see sqlite_writer.py for figures),
while a process waits on the disk, fsync and checkpoints included, without
holding up the loop. Reads run on the Trio thread on a read-only connection:
in WAL mode a read waits for no writer, and a point read costs tens of
microseconds, less than a trip to a worker thread would. Only a read that
SQLite answers with "busy" (another connection recovering the WAL) goes to a
thread that may wait.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, TypeVar

import trio

from engine.models import (
    AuditEntry,
    AuditRecord,
    Challenge,
    ChallengeStatus,
    Decision,
    Device,
    Enrollment,
    EnrollmentStatus,
)
from engine.store.sqlite_audit import (
    AUDIT_COLUMNS,
    audit_record,
    audit_rows,
    insert_audit,
    json_text,
)
from engine.store import sqlite_tables as tables
from engine.store.sqlite_schema import BUSY_TIMEOUT_MS, connect_reader
from engine.store.sqlite_totp import SqliteTotpStore
from engine.store.sqlite_writer import encode
from engine.store.sqlite_writer_process import WriterFailed, WriterProcess

T = TypeVar("T")
log = logging.getLogger(__name__)

WRITE_QUEUE_SIZE = 1_024  # a full queue makes writers wait: backpressure, not loss
MAX_BATCH = 256  # bounds one transaction's duration, and so the latency of the next batch
AUDIT_QUERY_LIMIT = 1_000
_SYNCHRONOUS_MODES = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})


@dataclass(eq=False, slots=True)
class _Op(Generic[T]):
    """One queued write and, once its batch has run, its outcome.

    Mutable on purpose: the writer task fills in the outcome, then sets `done`.
    """

    encoded: bytes  # a module-level function of the connection and its arguments, pickled
    detached: bool = False  # nobody waits for it: a failure can only be logged
    done: trio.Event = field(default_factory=trio.Event)
    result: T | None = None
    error: BaseException | None = None


class SqliteStore:
    """The `Store` on one SQLite file; open it with `open_sqlite_store`.

    A caller cancelled while its write waits in the queue or in a batch does
    not withdraw the write: it still commits, the caller just does not learn
    the result (a cancelled wait for a full queue, though, queues nothing).

    Attributes:
        transactions_committed: how many write transactions have committed;
            far fewer than writes under load, which is the point of batching.
    """

    def __init__(self, writer: WriterProcess, reader: sqlite3.Connection):
        self._writer = writer
        self._reader = reader
        # A read that waits in a thread holds the read connection meanwhile.
        self._read_waiting = trio.Lock()
        self._queue_in, self._queue_out = trio.open_memory_channel[_Op[Any]](WRITE_QUEUE_SIZE)
        self._closing = False
        self.transactions_committed = 0
        self.totp = SqliteTotpStore(self)

    @property
    def writer_pid(self) -> int:
        """The writer process (engine/store/sqlite_writer.py)."""
        return self._writer.pid

    # -- enrollments -------------------------------------------------------
    async def create_enrollment(
        self, enrollment: Enrollment, code_hash: bytes, audit: Sequence[AuditEntry] = ()
    ) -> None:
        params = (
            enrollment.enrollment_id,
            enrollment.user_id,
            enrollment.created_at,
            enrollment.expires_at,
            str(enrollment.status),
            enrollment.device_id,
            bytes(code_hash),
        )
        await self._write(tables.create_enrollment, params, audit_rows(audit))

    async def get_enrollment(self, enrollment_id: str, now_ms: int) -> Enrollment | None:
        row = await self._read_one(
            f"SELECT {tables.ENROLLMENT_COLUMNS} FROM enrollments WHERE enrollment_id = ?",
            (enrollment_id,),
        )
        if row is None:
            return None
        enrollment = tables.enrollment_from(row)
        if enrollment.status is EnrollmentStatus.PENDING and enrollment.expires_at <= now_ms:
            return replace(enrollment, status=EnrollmentStatus.EXPIRED)
        return enrollment

    async def complete_enrollment(
        self, code_hash: bytes, device: Device, now_ms: int, audit: Sequence[AuditEntry] = ()
    ) -> tuple[Enrollment, Device | None]:
        return await self._write(
            tables.complete_enrollment, bytes(code_hash), device, now_ms, audit_rows(audit)
        )

    # -- devices -----------------------------------------------------------
    async def get_device(self, device_id: str) -> Device | None:
        row = await self._read_one(tables.SELECT_DEVICE, (device_id,))
        return None if row is None else tables.device_from(row)

    async def active_device_for_user(self, user_id: str) -> Device | None:
        row = await self._read_one(
            f"SELECT {tables.DEVICE_COLUMNS} FROM devices WHERE user_id = ? AND revoked_at IS NULL",
            (user_id,),
        )
        return None if row is None else tables.device_from(row)

    async def revoke_device(
        self, device_id: str, now_ms: int, audit: Sequence[AuditEntry] = ()
    ) -> Device | None:
        return await self._write(tables.revoke_device, device_id, now_ms, audit_rows(audit))

    async def update_push_token(self, device_id: str, push_token: str | None) -> None:
        await self._write(tables.update_push_token, device_id, push_token)

    async def touch_device(self, device_id: str, last_seen_ms: int) -> None:
        """Record when the device was last connected; an older time never
        overwrites a newer one (two connections may report out of order)."""
        await self._write(tables.touch_device, device_id, last_seen_ms)

    # -- challenges --------------------------------------------------------
    async def create_challenge(
        self, challenge: Challenge, audit: Sequence[AuditEntry] = ()
    ) -> None:
        await self._write(tables.create_challenge, tables.challenge_params(challenge), audit_rows(audit))

    async def get_challenge(self, challenge_id: str) -> Challenge | None:
        row = await self._read_one(tables.SELECT_CHALLENGE, (challenge_id,))
        return None if row is None else tables.challenge_from(row)

    async def decide_challenge(
        self, challenge_id: str, decision: Decision, audit: Sequence[AuditEntry] = ()
    ) -> Challenge | None:
        if not ChallengeStatus(decision.status).is_final:
            raise ValueError("a decision must end the challenge, not leave it pending")
        params = (
            str(decision.status),
            decision.decided_at,
            decision.reason,
            None if decision.biometric is None else int(decision.biometric),
            int(decision.fraud),
            challenge_id,
        )
        return await self._write(tables.decide_challenge, params, audit_rows(audit))

    async def record_delivery(
        self,
        challenge_id: str,
        *,
        channel: str | None = None,
        sent_at: int | None = None,
        delivered_at: int | None = None,
        shown_at: int | None = None,
    ) -> None:
        if channel is None and sent_at is None and delivered_at is None and shown_at is None:
            return
        await self._write(tables.record_delivery, (channel, sent_at, delivered_at, shown_at, challenge_id))

    def record_delivery_soon(
        self,
        challenge_id: str,
        *,
        channel: str | None = None,
        sent_at: int | None = None,
        delivered_at: int | None = None,
        shown_at: int | None = None,
    ) -> None:
        if channel is None and sent_at is None and delivered_at is None and shown_at is None:
            return
        self._write_soon(tables.record_delivery, (channel, sent_at, delivered_at, shown_at, challenge_id))

    async def open_challenges_for_device(self, device_id: str, now_ms: int) -> list[Challenge]:
        rows = await self._read_all(
            f"SELECT {tables.CHALLENGE_COLUMNS} FROM challenges"
            " WHERE device_id = ? AND status = 'pending' AND expires_at > ?"
            " ORDER BY created_at, rowid",  # rowid: the order they were created in
            (device_id, now_ms),
        )
        return [tables.challenge_from(row) for row in rows]

    async def pending_challenges(self) -> list[Challenge]:
        rows = await self._read_all(
            f"SELECT {tables.CHALLENGE_COLUMNS} FROM challenges WHERE status = 'pending'"
            " ORDER BY created_at, rowid",  # rowid: the order they were created in
            (),
        )
        return [tables.challenge_from(row) for row in rows]

    # -- policy ------------------------------------------------------------
    async def load_policy(self) -> dict[str, Any]:
        rows = await self._read_all("SELECT key, value FROM policy ORDER BY key", ())
        return {row["key"]: json.loads(row["value"]) for row in rows}

    async def save_policy(self, changes: dict[str, Any], audit: Sequence[AuditEntry] = ()) -> None:
        pairs = [(key, json_text(value)) for key, value in changes.items()]
        entries = audit_rows(audit)
        if not pairs and not entries:
            return

        await self._write(tables.save_policy, pairs, entries)

    # -- audit -------------------------------------------------------------
    async def append_audit(self, entries: Sequence[AuditEntry]) -> None:
        rows = audit_rows(entries)
        if rows:
            await self._write(insert_audit, rows)

    async def query_audit(
        self,
        *,
        user_id: str | None = None,
        device_id: str | None = None,
        challenge_id: str | None = None,
        kind: str | None = None,
        since_ms: int | None = None,
        after_seq: int | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """Matching records in sequence order, at most 1,000 however large `limit` is."""
        limit = max(0, min(limit, AUDIT_QUERY_LIMIT))
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("user_id", user_id),
            ("device_id", device_id),
            ("challenge_id", challenge_id),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if kind is not None and kind.endswith("."):
            # A range rather than LIKE: it uses the index and needs no escaping.
            # '/' follows '.' in byte order, so [kind, kind[:-1] + '/') is the prefix.
            clauses.append("kind >= ? AND kind < ?")
            params += [kind, kind[:-1] + "/"]
        elif kind is not None:
            clauses.append("kind = ?")
            params.append(kind)
        if since_ms is not None:
            clauses.append("at >= ?")
            params.append(since_ms)
        if after_seq is not None:
            clauses.append("seq > ?")
            params.append(after_seq)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self._read_all(
            f"SELECT {AUDIT_COLUMNS} FROM audit{where} ORDER BY seq LIMIT ?", (*params, limit)
        )
        return [audit_record(row) for row in rows]

    # -- the write path ----------------------------------------------------
    async def _write(self, run: Callable[..., T], *args: Any) -> T:
        """Queue `run(conn, *args)` for the next batch; its result once the batch committed.

        `run` is a module-level function and `args` pickle: the writer
        process runs them (engine/store/sqlite_writer.py).
        """
        op: _Op[T] = _Op(encode(run, args))
        try:
            await self._queue_in.send(op)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise trio.ClosedResourceError("the store is closed") from None
        await op.done.wait()
        if op.error is not None:
            raise op.error
        return op.result  # type: ignore[return-value]  # T, set by the writer

    def _write_soon(self, run: Callable[..., None], *args: Any) -> None:
        """Queue `run(conn, *args)` for the next batch without waiting for it; a failure is logged.

        Raises:
            trio.ClosedResourceError: the store is closed.
            trio.WouldBlock: the write queue is full (the caller may fall back to `_write`).
        """
        op: _Op[None] = _Op(encode(run, args), detached=True)
        try:
            self._queue_in.send_nowait(op)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise trio.ClosedResourceError("the store is closed") from None

    async def _run_writer(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Commit queued writes in batches until the queue is closed and empty."""
        batch: list[_Op[Any]] = []
        task_status.started()
        try:
            async for first in self._queue_out:
                batch = [first]
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(self._queue_out.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                gone: WriterFailed | None = None
                try:
                    # Shielded: a batch sent always gets its answer, which the
                    # process gives once it committed or failed, so no caller
                    # is told "not written" about a write that was.
                    with trio.CancelScope(shield=True):
                        committed, outcome = await self._writer.run([op.encoded for op in batch])
                except WriterFailed as exc:
                    committed, outcome, gone = False, exc, exc
                if committed:
                    self.transactions_committed += 1
                    for op, (value, error) in zip(batch, outcome, strict=True):
                        op.result, op.error = value, error
                else:
                    _fail(batch, outcome)
                for op in batch:
                    op.done.set()
                    if op.detached and op.error is not None:
                        log.warning("a queued write failed: %r", op.error)
                if gone is not None:
                    raise gone  # no later write can commit: the store ends, loudly
                batch = []
        finally:
            # Cancelled or crashed: whatever has not run never will; tell its callers.
            leftovers = list(batch)
            with contextlib.suppress(trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                while True:
                    leftovers.append(self._queue_out.receive_nowait())
            self._queue_out.close()
            for op in leftovers:
                if not op.done.is_set():
                    op.error = trio.ClosedResourceError("the store closed before this write ran")
                    op.done.set()

    # -- the read path -----------------------------------------------------
    async def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        """Run `query` on the read connection, on the Trio thread (see the module's doc).

        In WAL mode a read waits for no writer; SQLite answers busy only in
        rare moments (another connection recovering or closing the WAL), and
        then the read is tried again in a thread that may wait for it.
        """
        await trio.lowlevel.checkpoint()
        if self._closing:
            raise trio.ClosedResourceError("the store is closed")
        if not self._read_waiting.locked():
            try:
                return query(self._reader)
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                    raise
        async with self._read_waiting:
            return await trio.to_thread.run_sync(self._read_patiently, query)

    def _read_patiently(self, query: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._reader
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        try:
            return query(conn)
        finally:
            conn.execute("PRAGMA busy_timeout = 0")

    async def _read_one(self, sql: str, params: Sequence[Any]) -> sqlite3.Row | None:
        return await self._read(lambda conn: conn.execute(sql, params).fetchone())

    async def _read_all(self, sql: str, params: Sequence[Any]) -> list[sqlite3.Row]:
        return await self._read(lambda conn: conn.execute(sql, params).fetchall())

    # -- closing -----------------------------------------------------------
    def _stop(self) -> None:
        """Accept no more reads or writes; what is queued still runs."""
        self._closing = True
        self._queue_in.close()

    def _close_reader(self) -> None:
        self._closing = True
        self._reader.close()


@contextlib.asynccontextmanager
async def open_sqlite_store(
    path: str | os.PathLike[str], *, synchronous: str = "FULL"
) -> AsyncIterator[SqliteStore]:
    """Open (creating if needed) the store at `path` and run its writer.

    Creates the parent directory and brings the schema up to date. On exit,
    writes already queued are committed before the connections close; a write
    attempted after that raises `trio.ClosedResourceError`.

    Args:
        path: the database file. Not ":memory:": the read connection must
            see the same database as the writer.
        synchronous: SQLite's `PRAGMA synchronous` for the writer. FULL makes
            every commit durable on power loss; NORMAL (in WAL mode) only on
            a process crash, and is faster.
    """
    mode = synchronous.upper()
    if mode not in _SYNCHRONOUS_MODES:
        raise ValueError(
            f"synchronous must be one of {sorted(_SYNCHRONOUS_MODES)}, not {synchronous!r}"
        )
    reader = await trio.to_thread.run_sync(connect_reader, Path(path))
    try:
        writer = await WriterProcess.start(os.fspath(path), mode, BUSY_TIMEOUT_MS)
    except BaseException:
        reader.close()
        raise
    store = SqliteStore(writer, reader)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store._run_writer)
            try:
                yield store
            finally:
                store._stop()
    finally:
        # Shielded: connections must be closed even when we leave by cancellation.
        # The writer closes last: the last connection checkpoints the WAL into the file.
        with trio.CancelScope(shield=True):
            async with store._read_waiting:
                await trio.to_thread.run_sync(store._close_reader)
            await writer.close()


def _fail(batch: list[_Op[Any]], cause: BaseException) -> None:
    """The whole transaction failed: nothing of the batch is kept, and every caller learns it."""
    for op in batch:
        failure = sqlite3.OperationalError(f"the write transaction failed: {cause}")
        failure.__cause__ = cause
        op.error = failure
