"""A node as a child process: `pushguard serve` on ephemeral loopback ports.

`pushguard simulate --spawn-node` and `make bench` both run the node they
measure this way, so that its memory and CPU are its own and can be read
from /proc.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

STOP_TIMEOUT_S = 60


class LocalNode:
    """Started by the constructor; `stop` shuts it down as SIGINT does (cleanly)."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pushguard", "serve", "--data-dir", str(data_dir), "--ws", "127.0.0.1:0",
             "--rpc", "127.0.0.1:0", "--log-level", "WARNING"],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # "pushguard node ...: phones ws://H:P/v1/device, backends H:P"
        if "phones " not in line:
            self.process.kill()
            self.process.wait()
            raise SystemExit(f"the node did not start: {line!r}")
        self.ws = line.split("phones ", 1)[1].split(",", 1)[0].strip()
        self.rpc = line.rsplit("backends ", 1)[1].strip()
        self.rpc_port = int(self.rpc.rsplit(":", 1)[1])

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def api_key(self) -> str:
        """The development operator key the node wrote on its first start."""
        return (self.data_dir / "dev-api-key").read_text().strip()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
