"""The process's descriptor budget: how many sockets one node may hold."""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)

# Descriptors kept back for the store, listeners, RPC clients and logs.
RESERVED_DESCRIPTORS = 500


def raise_open_files_limit() -> int:
    """Raise the soft open-files limit to the hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, hard, exc)
    return soft


def connection_budget(configured: int | None) -> int:
    """Device connections this node accepts: the configured number, or what the
    descriptor limit allows after the reserve."""
    limit = raise_open_files_limit()
    allowed = max(limit - RESERVED_DESCRIPTORS, 1)
    if configured is None:
        return allowed
    return min(configured, allowed)
