"""The SQLite store's writer, in a process of its own.

Group commit needs one writer; where it runs decides what the node's event
loop pays for it. In a worker thread it shares the GIL with a loop that
lets go of it for a moment at every system call, so under load the thread
loses the race for it again and again: one store read took 4 s beside a
busy loop, and `python -m bench.store_load` counted no challenge in 4 s
beside a busy loop against 3,959/s beside an idle one. On the Trio thread
itself every COMMIT's fsync, and every checkpoint, would hold the loop.
A process has a GIL of its own and may block on the disk as long as the
disk takes: the loop sends it a batch of operations down a pipe and
awaits the outcomes, and waits for nothing else.

An operation is data: a module-level function of the connection and its
arguments, pickled by reference (so both processes run the same code).
Its outcome comes back pickled: the function's value or the exception it
raised, or, if the transaction as a whole failed, that failure. The pipe
carries only what this process itself sends; nothing else ever writes to it.

Run as `python -m engine.store.sqlite_writer PATH SYNCHRONOUS BUSY_TIMEOUT_MS`
by `WriterProcess` (engine/store/sqlite_writer_process.py), never by hand.
It imports no Trio (nor do the table modules whose operations it runs), so
it starts in tens of milliseconds. It ignores SIGINT and SIGTERM (they are
meant for the node, which still writes as it stops) and exits when its
stdin closes.
"""

from __future__ import annotations

import contextlib
import pickle
import signal
import sqlite3
import struct
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from engine.store.sqlite_schema import open_connection


FRAME = struct.Struct("!I")  # the length of what follows: a batch, an operation in it, or a reply
READY = b"ready\n"

Operation = tuple[Callable[..., Any], tuple[Any, ...]]
# One outcome an operation: (value, None) or (None, exception).
Outcomes = list[tuple[Any, BaseException | None]]


class _OperationRaised(Exception):
    """An operation of a batch run without savepoints raised: run it again with them."""


def encode(run: Callable[..., Any], args: tuple[Any, ...]) -> bytes:
    """One operation as the writer process receives it.

    Raises:
        pickle.PicklingError, TypeError, AttributeError: `run` is not a
            module-level function, or an argument does not pickle.
    """
    if getattr(run, "__module__", None) == "__main__":
        raise pickle.PicklingError(f"{run.__qualname__} is defined in __main__, which the writer cannot import")
    return pickle.dumps((run, args), pickle.HIGHEST_PROTOCOL)


def frame_batch(batch: Sequence[bytes]) -> bytes:
    """A batch of encoded operations as one message down the pipe."""
    body = b"".join([FRAME.pack(len(blob)) + blob for blob in batch])
    return FRAME.pack(len(body)) + body


def _operations(body: bytes) -> list[Operation]:
    operations, offset = [], 0
    while offset < len(body):
        (size,) = FRAME.unpack_from(body, offset)
        offset += FRAME.size
        operations.append(_decode(body[offset:offset + size]))
        offset += size
    return operations


def _decode(blob: bytes) -> Operation:
    try:
        run, args = pickle.loads(blob)
    except Exception as exc:
        error = RuntimeError(f"the writer process cannot load this operation: {exc!r}")

        def unloadable(conn: sqlite3.Connection) -> Any:
            raise error

        return unloadable, ()
    return run, args


def run_batch(conn: sqlite3.Connection, batch: Sequence[Operation]) -> tuple[bool, Any]:
    """Run one batch as one transaction: (True, outcomes) if it committed, else (False, error).

    First without savepoints: nearly every batch succeeds whole, and a
    savepoint costs two statements an operation. If an operation raises,
    the transaction is rolled back and the batch runs again with a savepoint
    around each operation, so that the one that raised is undone and its
    exception goes to its caller alone while the rest commit.
    """
    try:
        return True, _transaction(conn, batch, savepoints=False)
    except _OperationRaised:
        pass
    except sqlite3.Error as exc:
        return False, exc
    try:
        return True, _transaction(conn, batch, savepoints=True)
    except sqlite3.Error as exc:
        return False, exc


def _transaction(conn: sqlite3.Connection, batch: Sequence[Operation], *, savepoints: bool) -> Outcomes:
    outcomes: Outcomes = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for run, args in batch:
            if not savepoints:
                try:
                    outcomes.append((run(conn, *args), None))
                except Exception as exc:
                    raise _OperationRaised from exc
                continue
            conn.execute("SAVEPOINT op")
            try:
                value = run(conn, *args)
            except Exception as exc:
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                outcomes.append((None, _portable(exc)))
            else:
                conn.execute("RELEASE op")
                outcomes.append((value, None))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
    return outcomes


def _portable(exc: BaseException) -> BaseException:
    """`exc` if it survives pickling, else a RuntimeError that says what it was."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def _reply(outcome: tuple[bool, Any]) -> bytes:
    try:
        return pickle.dumps(outcome, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        committed, value = outcome
        if not committed:
            return pickle.dumps((False, RuntimeError(repr(value))), pickle.HIGHEST_PROTOCOL)
        # Committed, but a value does not pickle: each op's outcome alone.
        outcomes = []
        for result, error in value:
            try:
                pickle.dumps((result, error))
                outcomes.append((result, error))
            except Exception:
                outcomes.append((None, RuntimeError(f"committed, but its result cannot be sent back: {exc!r}")))
        return pickle.dumps((True, outcomes), pickle.HIGHEST_PROTOCOL)


def _read_exact(stream: Any, size: int) -> bytes | None:
    data = stream.read(size)
    return data if len(data) == size else None


def _serve(path: str, synchronous: str, busy_timeout_ms: int) -> None:
    # Ctrl-C in a terminal, or a service manager's SIGTERM, reaches the whole
    # process group: the node must still commit what it writes while it
    # shuts down. This process ends when the node closes its stdin (or dies).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # SQLite checkpoints the WAL inside COMMIT every 1,000 pages: here, that
    # blocks nobody.
    conn = open_connection(Path(path), busy_timeout_ms)
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    out.write(READY)
    out.flush()
    try:
        while (header := _read_exact(inp, FRAME.size)) is not None:
            body = _read_exact(inp, FRAME.unpack(header)[0])
            if body is None:
                break
            reply = _reply(run_batch(conn, _operations(body)))
            out.write(FRAME.pack(len(reply)) + reply)
            out.flush()
    finally:
        conn.close()  # the last connection checkpoints the WAL into the file


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2], int(sys.argv[3]))
