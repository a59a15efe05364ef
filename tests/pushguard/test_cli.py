"""The `pushguard` command as an operator runs it: a real process."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import pytest
import trio

from engine.rpc_client import RpcClient
from simulator.device import SimPhone

PUSHGUARD = [sys.executable, "-m", "pushguard"]


def test_help_names_every_command_and_flag():
    top = subprocess.run([*PUSHGUARD, "--help"], capture_output=True, text=True, check=True).stdout
    assert "serve" in top and "demo" in top
    serve = subprocess.run([*PUSHGUARD, "serve", "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--config", "--data-dir", "--ws", "--rpc"):
        assert flag in serve


def test_bad_config_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[policy]\nmax_open_per_resource = 0\n")
    run = subprocess.run([*PUSHGUARD, "serve", "--config", str(bad), "--data-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 2
    assert "max_open_per_resource" in run.stderr


@pytest.mark.trio
async def test_serve_runs_until_sigterm_and_closes_phones_with_1001(tmp_path):
    process = await trio.lowlevel.open_process(
        [*PUSHGUARD, "serve", "--data-dir", str(tmp_path), "--ws", "127.0.0.1:0", "--rpc", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        banner = b""
        with trio.fail_after(20):
            while b"\n" not in banner:
                banner += await process.stdout.receive_some(4096)
        ws_port, rpc_port = map(int, re.search(rb":(\d+)/v1/device, backends [^:]+:(\d+)", banner).groups())
        key = (tmp_path / "dev-api-key").read_text().strip()
        async with trio.open_nursery() as nursery:
            async with RpcClient.connect("127.0.0.1", rpc_port, api_key=key) as rpc:
                assert rpc.role == "operator"
                started = await rpc.call("push.begin_enrollment", "olga")
            phone = SimPhone(f"ws://127.0.0.1:{ws_port}/v1/device", nursery)
            await phone.enroll(started["uri"])
            await phone.hello()
            process.send_signal(signal.SIGTERM)
            assert await phone.wait_closed(timeout=20) == 1001
        with trio.fail_after(20):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.stdout.aclose()
        await process.stderr.aclose()


def test_demo_plays_every_scenario(tmp_path):
    run = subprocess.run([*PUSHGUARD, "demo", "--data-dir", str(tmp_path / "demo")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "all scenarios ended as expected" in run.stdout
    assert run.stdout.count("PASS") == 9
    assert "FAIL" not in run.stdout
