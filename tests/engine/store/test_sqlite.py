"""What only the SQLite store promises: WAL, group commit, a free Trio loop, draining.

Several tests hold SQLite's write lock from a second, plain connection: the
store's writer then waits inside its worker thread, which lets a test pile up
writes behind it, and shows that the Trio loop runs on meanwhile.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import pickle
import signal
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from engine.models import AuditEntry, Challenge, Device, Enrollment, Platform, ResourceKind
from engine.store.base import EnrollmentRejected, Store
from engine.store.sqlite import SqliteStore, open_sqlite_store
from engine.store.sqlite_schema import SCHEMA_VERSION
from engine.store.sqlite_writer_process import WriterFailed

pytestmark = pytest.mark.trio

NOW = 1_700_000_000_000


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "pushguard.sqlite3"


@contextlib.contextmanager
def write_lock(path: Path) -> Iterator[sqlite3.Connection]:
    """Hold the database's write lock from another connection until released."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield other
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()


def release(lock: sqlite3.Connection) -> None:
    lock.execute("COMMIT")


def note(i: int) -> list[AuditEntry]:
    return [AuditEntry(at=NOW + i, kind="test.write", detail={"i": i})]


def pending_enrollment(n: int, user_id: str = "alice") -> Enrollment:
    return Enrollment(
        enrollment_id=f"e{n}", user_id=user_id, created_at=NOW, expires_at=NOW + 60_000
    )


def phone(device_id: str) -> Device:
    return Device(
        device_id=device_id,
        user_id="-",
        public_key=b"k" * 32,
        platform=Platform.SIM,
        enrolled_at=NOW,
    )


def raw_query(path: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def test_sqlite_store_has_every_store_method_with_the_same_signature() -> None:
    methods = [
        name
        for name, _ in inspect.getmembers(Store, inspect.isfunction)
        if not name.startswith("_")
    ]
    assert "decide_challenge" in methods  # the protocol was read, not an empty list
    for name in methods:
        assert inspect.signature(getattr(SqliteStore, name)) == inspect.signature(
            getattr(Store, name)
        ), name


async def test_the_database_uses_wal_and_the_current_schema(db_path: Path) -> None:
    async with open_sqlite_store(db_path):
        assert raw_query(db_path, "PRAGMA journal_mode") == [("wal",)]
        assert raw_query(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


async def test_foreign_keys_are_enforced(db_path: Path) -> None:
    orphan = Challenge(
        challenge_id="c1",
        user_id="alice",
        device_id="no-such-device",
        resource_kind=ResourceKind.LOGIN,
        resource_name="vpn",
        context={},
        created_at=NOW,
        expires_at=NOW + 60_000,
        context_hash="h",
    )
    async with open_sqlite_store(db_path) as store:
        with pytest.raises(sqlite3.IntegrityError):
            await store.create_challenge(orphan)
        assert await store.get_challenge("c1") is None


async def test_a_database_from_a_newer_pushguard_is_refused(db_path: Path) -> None:
    async with open_sqlite_store(db_path):
        pass
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()

    with pytest.raises(RuntimeError, match="newer"):
        async with open_sqlite_store(db_path):
            pass


async def test_unknown_synchronous_mode_is_refused(db_path: Path) -> None:
    with pytest.raises(ValueError):
        async with open_sqlite_store(db_path, synchronous="FULL; DROP TABLE audit"):
            pass


async def test_the_audit_log_cannot_be_rewritten(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as store:
        await store.append_audit(note(1))
    conn = sqlite3.connect(db_path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE audit SET kind = 'forged'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM audit")
    finally:
        conn.close()
    assert raw_query(db_path, "SELECT kind FROM audit") == [("test.write",)]


async def test_concurrent_writes_are_committed_in_few_transactions(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as store:
        before = store.transactions_committed
        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(store.append_audit, note(i))

        committed = store.transactions_committed - before
        records = await store.query_audit(limit=1_000)

    assert sorted(r.detail["i"] for r in records) == list(range(200))
    assert 1 <= committed <= 10


async def test_a_failing_write_does_not_take_its_batch_down(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as store:
        await store.create_enrollment(pending_enrollment(0), b"code-0")
        await store.complete_enrollment(b"code-0", phone("d0"), NOW)
        await store.create_enrollment(pending_enrollment(1), b"code-1")
        errors: dict[str, type[BaseException]] = {}

        async def attempt(name: str, write) -> None:  # type: ignore[no-untyped-def]
            try:
                await write()
            except Exception as exc:
                errors[name] = type(exc)

        with write_lock(db_path) as lock:
            async with trio.open_nursery() as nursery:
                # The first write takes the writer into a batch that waits for
                # the lock; everything after it queues up for the next batch.
                nursery.start_soon(store.append_audit, note(-1))
                await trio.testing.wait_all_tasks_blocked()
                before = store.transactions_committed
                for i in range(40):
                    nursery.start_soon(attempt, f"ok-{i}", lambda i=i: store.append_audit(note(i)))
                nursery.start_soon(
                    attempt,
                    "duplicate-code",
                    lambda: store.create_enrollment(pending_enrollment(2), b"code-0"),
                )
                nursery.start_soon(
                    attempt,
                    "unknown-code",
                    lambda: store.complete_enrollment(b"nope", phone("dx"), NOW),
                )
                # Revokes d0, then fails inserting a device that already exists:
                # the revocation must be undone with it.
                nursery.start_soon(
                    attempt,
                    "half-done",
                    lambda: store.complete_enrollment(b"code-1", phone("d0"), NOW),
                )
                await trio.testing.wait_all_tasks_blocked()
                release(lock)

        assert store.transactions_committed - before == 2  # the first write's batch, then one more
        assert errors == {
            "duplicate-code": sqlite3.IntegrityError,
            "unknown-code": EnrollmentRejected,
            "half-done": sqlite3.IntegrityError,
        }
        assert sorted(r.detail["i"] for r in await store.query_audit(kind="test.write")) == list(
            range(-1, 40)
        )
        assert await store.get_enrollment("e2", NOW) is None
        d0 = await store.get_device("d0")
        assert d0 is not None and d0.active
        e1 = await store.get_enrollment("e1", NOW)
        assert e1 is not None and e1.device_id is None


async def test_the_trio_loop_runs_while_writes_wait_on_the_database(db_path: Path) -> None:
    ticks = 0
    completed = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await trio.sleep(0.001)
            ticks += 1

    async def write(store: SqliteStore, i: int) -> None:
        nonlocal completed
        await store.append_audit(note(i))
        completed += 1

    async with open_sqlite_store(db_path) as store:
        with write_lock(db_path) as lock:
            async with trio.open_nursery() as background:
                background.start_soon(ticker)
                async with trio.open_nursery() as writers:
                    for i in range(100):
                        writers.start_soon(write, store, i)
                    # A writer blocking the loop would freeze the ticker until
                    # SQLite's busy timeout, then fail every write.
                    with trio.fail_after(3):
                        while ticks < 50:
                            await trio.sleep(0.001)
                    assert completed == 0
                    assert await store.query_audit() == []  # reads are not held up by the lock
                    release(lock)
                background.cancel_scope.cancel()
        assert completed == 100
        assert len(await store.query_audit(limit=1_000)) == 100


async def test_closing_commits_the_writes_already_queued(db_path: Path) -> None:
    completed = 0

    async def write(store: SqliteStore, i: int) -> None:
        nonlocal completed
        await store.append_audit(note(i))
        completed += 1

    async def release_soon(lock: sqlite3.Connection) -> None:
        await trio.sleep(0.02)
        release(lock)

    with contextlib.ExitStack() as stack:
        async with trio.open_nursery() as nursery:
            async with open_sqlite_store(db_path) as store:
                lock = stack.enter_context(write_lock(db_path))
                for i in range(100):  # these fill one batch, which waits for the lock
                    nursery.start_soon(write, store, i)
                await trio.testing.wait_all_tasks_blocked()
                for i in range(100, 200):  # these wait in the queue
                    nursery.start_soon(write, store, i)
                await trio.testing.wait_all_tasks_blocked()
                assert completed == 0
                nursery.start_soon(release_soon, lock)
            closed = store

    assert completed == 200
    with pytest.raises(trio.ClosedResourceError):
        await closed.append_audit(note(999))
    with pytest.raises(trio.ClosedResourceError):
        await closed.query_audit()
    rows = raw_query(db_path, "SELECT count(*) FROM audit")
    assert rows == [(200,)]


async def test_a_read_that_finds_the_database_busy_waits_for_it_in_a_thread(db_path: Path) -> None:
    # A real busy reader in WAL mode needs another connection mid-recovery,
    # which a test cannot time; the query itself answers busy once instead.
    threads: list[bool] = []

    def query(conn: sqlite3.Connection) -> int:
        threads.append(threading.current_thread() is threading.main_thread())
        if len(threads) == 1:
            busy = sqlite3.OperationalError("database is locked")
            busy.sqlite_errorcode = sqlite3.SQLITE_BUSY
            raise busy
        return conn.execute("PRAGMA busy_timeout").fetchone()[0]

    async with open_sqlite_store(db_path) as store:
        assert await store._read(query) == 5_000  # the thread waits as long as a writer would
        assert threads == [True, False]
        assert await store._read(lambda conn: conn.execute("PRAGMA busy_timeout").fetchone()[0]) == 0


async def test_a_read_error_other_than_busy_goes_to_its_caller(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as store:
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            await store._read(lambda conn: conn.execute("SELECT * FROM nowhere").fetchall())
        assert await store.query_audit() == []


async def test_a_batch_that_cannot_begin_fails_every_caller_and_the_next_batch_commits(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("engine.store.sqlite.BUSY_TIMEOUT_MS", 50)
    errors: list[BaseException] = []

    async def attempt(i: int) -> None:
        try:
            await store.append_audit(note(i))
        except sqlite3.OperationalError as exc:
            errors.append(exc)

    async with open_sqlite_store(db_path) as store:
        with write_lock(db_path):  # held past the (shortened) busy timeout
            async with trio.open_nursery() as nursery:
                for i in range(5):
                    nursery.start_soon(attempt, i)
        assert len(errors) == 5
        assert all("the write transaction failed: database is locked" in str(e) for e in errors)
        await store.append_audit(note(99))  # the lock is gone: the writer goes on
        assert [r.detail["i"] for r in await store.query_audit()] == [99]


async def test_the_wal_does_not_grow_without_bound(db_path: Path) -> None:
    # The writer process checkpoints as it commits: 4,000 page-sized rows
    # (16 MB and more) leave a WAL of a few MB at most.
    page = "x" * 4_000
    async with open_sqlite_store(db_path) as store:
        for batch in range(40):
            async with trio.open_nursery() as nursery:
                for i in range(100):
                    nursery.start_soon(
                        store.append_audit,
                        [AuditEntry(at=NOW, kind="test.page", detail={"i": batch * 100 + i, "pad": page})],
                    )
        wal = db_path.with_name(db_path.name + "-wal")
        assert wal.stat().st_size < 8 * 2**20
        assert len(await store.query_audit(kind="test.page", limit=1_000)) == 1_000
    assert raw_query(db_path, "SELECT count(*) FROM audit") == [(4_000,)]


def _count_audit(conn: sqlite3.Connection) -> int:
    """A write operation that returns a value: how many audit rows the writer sees."""
    return conn.execute("SELECT count(*) FROM audit").fetchone()[0]


async def test_writes_run_in_a_process_of_their_own(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as store:
        assert store.writer_pid != os.getpid()
        await store.append_audit(note(1))
        assert await store._write(_count_audit) == 1


async def test_an_operation_that_does_not_pickle_fails_its_caller_alone(db_path: Path) -> None:
    async with open_sqlite_store(db_path) as store:
        with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
            await store._write(lambda conn: None)  # not module-level: the writer cannot import it
        await store.append_audit(note(1))
        assert len(await store.query_audit()) == 1


async def test_a_writer_process_that_dies_fails_the_writes_and_the_store_loudly(db_path: Path) -> None:
    with pytest.RaisesGroup(pytest.RaisesExc(WriterFailed), allow_unwrapped=True, flatten_subgroups=True):
        async with open_sqlite_store(db_path) as store:
            await store.append_audit(note(1))
            os.kill(store.writer_pid, signal.SIGKILL)
            with pytest.raises(sqlite3.OperationalError, match="the writer process ended"):
                await store.append_audit(note(2))
    assert raw_query(db_path, "SELECT count(*) FROM audit") == [(1,)]  # what committed is kept


async def test_the_writer_outlives_the_signals_meant_for_the_node(db_path: Path) -> None:
    # Ctrl-C or SIGTERM reach the node's whole process group; the node still
    # writes while it shuts down, so its writer must not die of them.
    async with open_sqlite_store(db_path) as store:
        await store.append_audit(note(1))
        for sig in (signal.SIGINT, signal.SIGTERM):
            os.kill(store.writer_pid, sig)
        await trio.sleep(0.2)
        await store.append_audit(note(2))
    assert raw_query(db_path, "SELECT count(*) FROM audit") == [(2,)]
