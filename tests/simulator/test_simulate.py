"""`pushguard simulate` as a load tester runs it: a real process, a real node, its report and --json."""

from __future__ import annotations

import io
import json
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from engine.rpc_client import RpcClient
from pushguard.cli import main as cli_main
from simulator.fleet import FleetEntry, load_fleet, save_fleet
from simulator.localnode import LocalNode
from simulator.report import LATENCIES, Report
from simulator.simulate import Progress

SIMULATE = [sys.executable, "-m", "pushguard", "simulate"]
LOAD = ["--phones", "40", "--rate", "40", "--duration", "1", "--mix", "approve=50,deny=20,fraud=10,ignore=20",
        "--ttl", "1", "--policy", "max_per_user_per_hour=1000", "--quiet"]


def simulate(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*SIMULATE, *args], capture_output=True, text=True, timeout=timeout)


def check_json_report(path: Path, *, workers: int, phones: int) -> dict:
    data = json.loads(path.read_text())
    assert data["workers"] == workers
    assert data["checks"]["ok"] > 0 and data["checks"].get("failed", 0) == 0
    assert data["failures"] == [] and data["faults"]["failures"] == []
    assert data["counters"]["phones"] == phones
    assert data["counters"]["phones_connected"] == phones
    outcomes = data["outcomes"]
    assert outcomes["approved"] > 0 and outcomes["denied"] > 0 and outcomes["expired"] > 0
    assert outcomes["approved"] + outcomes["denied"] + outcomes["expired"] == data["counters"]["created"]
    for name in LATENCIES:
        assert data["latencies_us"][name]["count"] > 0, name
    assert data["latencies_us"]["connect"]["count"] >= phones
    report = Report.from_dict(data)  # the histograms travel with it
    assert report.failed == 0
    assert report.latencies["connect"].get_total_count() == data["latencies_us"]["connect"]["count"]
    return data


# -- runs ----------------------------------------------------------------------------------

def test_spawn_node_two_workers_fleet_and_json(tmp_path):
    fleet, report = tmp_path / "fleet.json", tmp_path / "out" / "report.json"
    run = simulate("--spawn-node", "--workers", "2", *LOAD, "--faults", "replay=0.1,garbage=0.1",
                   "--fleet", str(fleet), "--json", str(report))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    assert "workers 2; phones 40 connected of 40" in run.stdout
    assert "-> PASS" in run.stdout
    assert re.search(r"node pid \d+: RSS", run.stdout)
    data = check_json_report(report, workers=2, phones=40)
    assert data["faults"]["injected"]["replay"] > 0 and data["faults"].get("failed") == {}
    assert data["info"]["fleet_saved"] == str(fleet)
    assert data["info"]["node"]["rss_end_mib"] > 0
    # CPU under load, of both sides, summed over the two workers
    assert data["info"]["node_load"]["cpu_s"] > 0 and data["info"]["sim_cpu_s"] > 0
    assert re.search(r"under load: node CPU \d+% of one core, \d+ us a challenge", run.stdout)
    assert re.search(r"simulator CPU under load: \d+ us a challenge", run.stdout)
    assert stat.S_IMODE(fleet.stat().st_mode) == 0o600
    ws_url, entries = load_fleet(fleet)
    assert ws_url.startswith("ws://127.0.0.1:")
    assert len(entries) == 40 and len({e.device_id for e in entries}) == 40
    # both workers enrolled their own share
    assert {e.user_id.rsplit("-", 1)[0] for e in entries} == {"sim-0", "sim-1"}


class ServedNode(LocalNode):
    """A node (`pushguard serve`) the simulator runs against, started as `--spawn-node` does."""

    def args(self) -> list[str]:
        return ["--ws", self.ws, "--rpc", self.rpc, "--node-data-dir", str(self.data_dir)]

    async def audit(self, kind: str) -> list[dict]:
        host, port = self.rpc.rsplit(":", 1)
        async with RpcClient.connect(host, int(port), api_key=self.api_key) as rpc:
            return await rpc.call("audit.query", {"kind": kind, "limit": 1000})


@pytest.fixture
def served_node(tmp_path) -> Iterator[ServedNode]:
    node = ServedNode(tmp_path / "node")
    try:
        yield node
    finally:
        node.stop()


def test_a_second_run_reuses_the_fleet_file(served_node, tmp_path):
    fleet = tmp_path / "fleet.json"
    first = simulate(*served_node.args(), "--workers", "2", *LOAD, "--fleet", str(fleet),
                     "--json", str(tmp_path / "first.json"))
    assert first.returncode == 0, first.stdout + first.stderr
    saved = fleet.read_bytes()
    assert len(load_fleet(fleet)[1]) == 40
    second = simulate(*served_node.args(), "--workers", "2", *LOAD, "--fleet", str(fleet),
                      "--json", str(tmp_path / "second.json"))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "-> PASS" in second.stdout
    data = check_json_report(tmp_path / "second.json", workers=2, phones=40)
    assert "fleet_saved" not in data["info"]
    assert fleet.read_bytes() == saved
    # the node enrolled 40 phones in all: the second run reconnected the same ones
    assert len(trio.run(served_node.audit, "device.enrolled")) == 40


def test_a_fleet_the_node_does_not_know_is_a_clear_error(tmp_path):
    # e.g. a fleet file saved on an earlier --spawn-node run, whose node (and data) are gone
    fleet = tmp_path / "fleet.json"
    save_fleet(fleet, "ws://127.0.0.1:8765/v1/device",
               [FleetEntry(f"sim-0-{i}", f"dev_gone{i}", Ed25519PrivateKey.generate().private_bytes_raw(), "pushguard")
                for i in range(4)])
    run = simulate("--spawn-node", "--phones", "4", "--rate", "4", "--duration", "0.5", "--fleet", str(fleet),
                   "--quiet")
    assert run.returncode in (1, 2)
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert re.search(r"fleet|auth_failed", run.stdout + run.stderr)


def test_no_node_at_the_address_is_a_clear_error():
    run = simulate("--rpc", "127.0.0.1:1", "--api-key", "k", "--quiet", timeout=30)
    assert run.returncode != 0
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert "127.0.0.1:1" in run.stderr


def test_a_policy_the_node_refuses_is_a_clear_error():
    run = simulate("--spawn-node", "--policy", "bogus_key=1", "--quiet", timeout=30)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert "bogus_key" in run.stderr


# -- bad arguments -------------------------------------------------------------------------

def test_load_may_only_target_loopback_exit_2():
    run = simulate("--rpc", "10.0.0.1:7464", timeout=30)
    assert run.returncode == 2
    assert run.stderr.strip() == "pushguard simulate: load may only target 127.0.0.0/8, not 10.0.0.1"
    assert run.stdout == ""


@pytest.mark.parametrize("args, message", [
    (["--rpc", "10.0.0.1:7464"], "load may only target 127.0.0.0/8, not 10.0.0.1"),
    (["--rpc", "[::1]:7464"], "load may only target 127.0.0.0/8"),
    (["--rpc", "example.com:7464"], "load may only target 127.0.0.0/8"),
    (["--ws", "ws://192.168.1.5:8765/v1/device"], "load may only target 127.0.0.0/8, not 192.168.1.5"),
    (["--ws", "http://127.0.0.1:8765/v1/device"], "--ws must be a ws:// or wss:// URL"),
    (["--rpc", "7464"], "expected HOST:PORT"),
    (["--rpc", "127.0.0.1:99999"], "99999"),
    (["--ws", "ws://127.0.0.1:99999/v1/device"], "99999"),
    (["--mix", "approve=70,allow=30"], "mix: unknown action 'allow'"),
    (["--mix", "approve=0"], "mix: give at least one action a positive weight"),
    (["--biometric", "2"], "biometric must be a probability"),
    (["--think", "exp"], "think time 'exp'"),
    (["--faults", "flap=2"], "faults: flap must be a probability from 0 to 1"),
    (["--faults", "bogus=0.1"], "faults: unknown fault 'bogus'"),
    (["--faults", "storm=0.1"], "--storm-at"),
    (["--storm-at", "-1"], "--storm-at"),
    (["--workers", "3", "--phones", "2"], "--workers cannot exceed --phones"),
    (["--workers", "0"], "--workers must be from 1 to 64"),
    (["--phones", "0"], "--phones must be from 1"),
    (["--duration", "0"], "--duration must be from 0.1 to 3600"),
    (["--rate", "nan"], "--rate must be from"),
    (["--offline", "1.5"], "--offline must be from 0 to 1"),
    (["--ttl", "0"], "--ttl must be from 1 to 600"),
    (["--challenges", "0"], "--challenges must be from 1"),
    (["--policy", "max_per_user_per_hour"], "--policy takes KEY=VALUE"),
])
def test_bad_arguments_exit_2_with_a_clear_message(args, message, capsys):
    assert cli_main(["simulate", *args, "--api-key", "k", "--quiet"]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("pushguard simulate: ")
    assert message in err
    assert out == ""


# -- the progress line -------------------------------------------------------------------------

def test_progress_sums_the_workers_into_one_line():
    stream = io.StringIO()
    progress = Progress(2, quiet=False, stream=stream)
    progress.update({"phase": "driving", "worker": 0, "created": 10, "decided": 8, "open": 2, "connected": 20,
                     "failed": 0})
    progress.update({"phase": "driving", "worker": 1, "created": 5, "decided": 5, "open": 0, "connected": 20,
                     "failed": 1})  # within the print interval: remembered, not printed
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert "created       10" in lines[0] and "connected      20" in lines[0]
    progress._printed = 0  # the interval has passed
    progress.update({"phase": "connecting", "worker": 0, "created": 12, "decided": 9, "open": 3, "connected": 21,
                     "failed": 0})
    last = stream.getvalue().splitlines()[-1]
    assert "connecting/driving" in last
    assert re.search(r"created\s+17\s+decided\s+14\s+open\s+3\s+connected\s+41\s+wrong 1", last), last
    assert "rate" in last


def test_quiet_progress_prints_nothing():
    stream = io.StringIO()
    progress = Progress(1, quiet=True, stream=stream)
    progress.update({"phase": "driving", "worker": 0, "created": 1, "decided": 0, "open": 1, "connected": 1,
                     "failed": 0})
    progress.finish()
    assert stream.getvalue() == ""
