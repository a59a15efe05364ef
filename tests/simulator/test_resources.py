"""What a load process may use: descriptors, loopback source addresses, /proc samples."""

from __future__ import annotations

import ipaddress
import os
import resource
import subprocess
import sys
import time

import pytest

from simulator.resources import (
    DESCRIPTOR_RESERVE,
    ProcessSample,
    check_loopback,
    raise_descriptor_limit,
    sample_process,
    source_addresses,
    usage_between,
)


def test_source_addresses_are_consecutive_loopback_addresses():
    assert source_addresses(3) == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    assert source_addresses(2, first="127.10.0.255") == ["127.10.0.255", "127.10.1.0"]
    many = source_addresses(1000, first="127.11.0.1")
    assert len(set(many)) == 1000
    assert all(ipaddress.ip_address(a) in ipaddress.ip_network("127.0.0.0/8") for a in many)


def test_at_least_one_source_address():
    assert source_addresses(0) == ["127.0.0.2"]


def test_source_addresses_reach_the_end_of_loopback_but_never_leave_it():
    assert source_addresses(2, first="127.255.255.254") == ["127.255.255.254", "127.255.255.255"]
    with pytest.raises(ValueError, match="127.0.0.0/8"):
        source_addresses(3, first="127.255.255.254")  # would be 128.0.0.0
    with pytest.raises(ValueError, match="127.0.0.0/8"):
        source_addresses(1, first="10.0.0.1")
    with pytest.raises(ValueError):
        source_addresses(1, first="not an address")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "127.45.6.7", "127.255.255.255", "localhost"])
def test_check_loopback_accepts_127_and_localhost(host):
    check_loopback(host)


@pytest.mark.parametrize("host", ["10.0.0.1", "0.0.0.0", "8.8.8.8", "128.0.0.1", "::1", "example.com",
                                  "127.0.0.1.example.com", ""])
def test_check_loopback_refuses_everything_else(host):
    with pytest.raises(ValueError, match="load may only target 127.0.0.0/8"):
        check_loopback(host)


def test_raise_descriptor_limit_lifts_the_soft_limit_to_the_hard_one():
    soft, allowed = raise_descriptor_limit()
    now_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft == now_soft
    if hard != resource.RLIM_INFINITY:
        assert soft == hard
    assert allowed == max(soft - DESCRIPTOR_RESERVE, 0)
    assert 0 < allowed < soft
    assert raise_descriptor_limit() == (soft, allowed)  # idempotent


def test_raise_descriptor_limit_in_a_process_that_starts_low():
    code = ("import resource; from simulator.resources import raise_descriptor_limit as r;"
            "s, h = resource.getrlimit(resource.RLIMIT_NOFILE);"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (256, h)); print(*r(), h)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    soft, allowed, hard = map(int, out.split())
    if hard != resource.RLIM_INFINITY:
        assert soft == hard > 256
    assert allowed == soft - DESCRIPTOR_RESERVE


def test_sample_process_reads_this_process():
    first = sample_process(os.getpid())
    assert first is not None
    assert 4 * 2**20 < first.rss_bytes < 8 * 2**30
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert first.rss_bytes <= maxrss * 1.01
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:  # burn some CPU
        pass
    second = sample_process(os.getpid())
    assert second is not None
    assert second.cpu_s - first.cpu_s >= 0.2
    assert second.at > first.at
    usage = usage_between(os.getpid(), first, second)
    assert usage["pid"] == os.getpid()
    assert usage["cpu_s"] == pytest.approx(second.cpu_s - first.cpu_s)
    assert 10 < usage["cpu_percent"] <= 200


def test_sample_process_of_a_process_that_is_gone_is_none():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    assert sample_process(process.pid) is None


def test_usage_between_two_samples():
    start = ProcessSample(rss_bytes=100 * 2**20, cpu_s=1.0, at=10.0)
    end = ProcessSample(rss_bytes=150 * 2**20, cpu_s=2.5, at=13.0)
    assert usage_between(42, start, end) == {"pid": 42, "rss_start_mib": 100, "rss_end_mib": 150,
                                             "cpu_s": 1.5, "cpu_percent": 50}


def test_sample_process_counts_its_live_children():
    # A node's store writer is a child process: its CPU and memory are the node's.
    child = subprocess.Popen([sys.executable, "-c",
                              "import time\nblock = bytearray(64 * 2**20)\nend = time.process_time() + 0.5\n"
                              "while time.process_time() < end: pass\ntime.sleep(30)"])
    try:
        before = sample_process(os.getpid())
        time.sleep(1.0)  # the child burns 0.5 s of CPU meanwhile; this process idles
        after = sample_process(os.getpid())
        assert before is not None and after is not None
        assert after.cpu_s - before.cpu_s >= 0.3
        assert after.rss_bytes > 64 * 2**20
    finally:
        child.kill()
        child.wait()
