"""The node's side of the SQLite writer process (engine/store/sqlite_writer.py).

It starts the process, sends it one batch of encoded operations at a time
over its stdin and reads the outcome from its stdout, and closes it: the
process then commits nothing more, checkpoints and exits.
"""

from __future__ import annotations

import contextlib
import pickle
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import trio

from engine.store.sqlite_writer import FRAME, READY, frame_batch


class WriterFailed(Exception):
    """The writer process is gone: no write can commit any more."""


class WriterProcess:
    """The node's side of the writer process: one batch at a time, over its stdin and stdout."""

    def __init__(self, process: trio.Process):
        self._process = process
        self._buffer = bytearray()

    @classmethod
    async def start(cls, path: str, synchronous: str, busy_timeout_ms: int) -> WriterProcess:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "engine.store.sqlite_writer", path, synchronous, str(busy_timeout_ms)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        writer = cls(process)
        try:
            with trio.fail_after(60):
                if await writer._read(len(READY)) != READY:
                    raise WriterFailed("the writer process did not start")
        except BaseException:
            with trio.CancelScope(shield=True):
                await writer.close()
            raise
        return writer

    @property
    def pid(self) -> int:
        return self._process.pid

    async def run(self, batch: Sequence[bytes]) -> tuple[bool, Any]:
        """Commit `batch` (operations made by `encode`); as `run_batch` answers. One caller at a time.

        Raises:
            WriterFailed: the process is gone (then every later call raises it too).
        """
        assert self._process.stdin is not None
        try:
            await self._process.stdin.send_all(frame_batch(batch))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise self._ended() from exc
        (size,) = FRAME.unpack(await self._read(FRAME.size))
        return pickle.loads(await self._read(size))

    async def _read(self, size: int) -> bytes:
        assert self._process.stdout is not None
        while len(self._buffer) < size:
            try:
                data = await self._process.stdout.receive_some(max(65536, size - len(self._buffer)))
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise self._ended() from exc
            if not data:
                raise self._ended()
            self._buffer += data
        chunk = bytes(self._buffer[:size])
        del self._buffer[:size]
        return chunk

    def _ended(self) -> WriterFailed:
        status = self._process.poll()
        return WriterFailed("the writer process ended" + ("" if status is None else f" (exit status {status})"))

    async def close(self) -> None:
        """Let the process finish (it commits nothing more) and wait for it to exit."""
        if self._process.stdin is not None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self._process.stdin.aclose()
        with trio.move_on_after(60):
            await self._process.wait()
        if self._process.poll() is None:
            self._process.kill()
            await self._process.wait()
        if self._process.stdout is not None:
            await self._process.stdout.aclose()
