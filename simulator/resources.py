"""What a load process may use: descriptors, loopback source addresses, and a
local node's memory and CPU read from /proc."""

from __future__ import annotations

import ipaddress
import os
import resource
import time
from dataclasses import dataclass

DESCRIPTOR_RESERVE = 200  # for the RPC connections, files and the interpreter itself
PORTS_PER_ADDRESS = 28_000  # Linux's default ephemeral range is 32768-60999


def raise_descriptor_limit() -> tuple[int, int]:
    """Raise the soft open-files limit to the hard one; (soft limit now, phones it allows)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft, max(soft - DESCRIPTOR_RESERVE, 0)


def source_addresses(count: int, first: str = "127.0.0.2") -> list[str]:
    """`count` consecutive loopback addresses: each gives a phone fleet its own
    ephemeral port range, so 50,000+ connections do not run out of ports.

    Raises:
        ValueError: an address would leave 127.0.0.0/8 (the only place load may go).
    """
    start = ipaddress.IPv4Address(first)
    addresses = [start + i for i in range(max(count, 1))]
    loopback = ipaddress.IPv4Network("127.0.0.0/8")
    if any(a not in loopback for a in addresses):
        raise ValueError("source addresses must stay inside 127.0.0.0/8")
    return [str(a) for a in addresses]


def check_loopback(host: str) -> None:
    """Raises:
        ValueError: the target is not in 127.0.0.0/8 ("localhost" is allowed).
    """
    if host == "localhost":
        return
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"load may only target 127.0.0.0/8, not {host!r}") from None
    if address not in ipaddress.IPv4Network("127.0.0.0/8"):
        raise ValueError(f"load may only target 127.0.0.0/8, not {host}")


@dataclass
class ProcessSample:
    rss_bytes: int
    cpu_s: float
    at: float


def sample_process(pid: int) -> ProcessSample | None:
    """The resident memory and CPU time so far of the process and its live children
    (a node's store writer is one), or None if the process is gone."""
    own = _sample_one(pid)
    if own is None:
        return None
    rss, cpu = own
    for child in _children(pid):
        sample = _sample_one(child)
        if sample is not None:
            rss, cpu = rss + sample[0], cpu + sample[1]
    return ProcessSample(rss, cpu, time.monotonic())


def _sample_one(pid: int) -> tuple[int, float] | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            rss_kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        cpu_s = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    except (OSError, StopIteration, IndexError, ValueError):
        return None
    return rss_kib * 1024, cpu_s


def _children(pid: int) -> list[int]:
    children: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as listed:
                children.extend(int(child) for child in listed.read().split())
    except (OSError, ValueError):
        pass
    return children


def usage_between(pid: int, start: ProcessSample, end: ProcessSample) -> dict[str, float]:
    elapsed = max(end.at - start.at, 1e-9)
    return {"pid": pid, "rss_start_mib": start.rss_bytes / 2**20, "rss_end_mib": end.rss_bytes / 2**20,
            "cpu_s": end.cpu_s - start.cpu_s, "cpu_percent": 100 * (end.cpu_s - start.cpu_s) / elapsed}
