"""A pushguard node: the parts wired together, started and stopped in order.

Start: open the store, load the policy, start the actor registry and the
challenge supervisor (which re-arms the expiry of challenges that were open
before a restart), then the RPC and websocket listeners. Stop: refuse new
work, close every phone's socket with 1001 after flushing its queued frames,
then let the store drain its queued writes and close.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from actors.device_actor import ActorDeps
from actors.guard import PushBombGuard
from actors.messages import Revoke
from actors.registry import ActorRegistry
from actors.supervisor import ChallengeSupervisor
from engine.backend_api import OPERATOR, BackendApi
from engine.clock import Clock
from engine.collector import steward
from engine.config import Config
from engine.enrollment import EnrollmentService
from engine.events import EventPublisher
from engine.gateway import DeviceGateway
from engine.limits import connection_budget
from engine.models import Device
from engine.policy import PolicyService
from engine.push.base import PushProvider
from engine.push.recording import RecordingPushProvider
from engine.rpc_server import RpcServer
from engine.state.base import SharedState
from engine.state.memory import memory_state
from engine.stats import NodeStats
from engine.store.base import Store
from engine.store.sqlite import open_sqlite_store
from engine.tokens import DeviceTokenVerifier
from engine.totp.sealing import SecretSealer, load_or_create_key
from engine.totp.service import TotpService

log = logging.getLogger(__name__)

DEV_KEY_FILE = "dev-api-key"


def ensure_api_keys(config: Config) -> dict[str, str]:
    """The configured keys; with none, a development operator key kept in
    `<data-dir>/dev-api-key` (created on first start, readable by its owner only)."""
    if config.api_keys:
        return dict(config.api_keys)
    path = config.data_dir / DEV_KEY_FILE
    if path.exists():
        key = path.read_text().strip()
    else:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        key = "pgdev_" + secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key + "\n")
    log.warning("no api_keys configured: using the development operator key in %s", path)
    return {key: OPERATOR}


class Node:
    """Everything one node runs. Built by `open_node`."""

    def __init__(self, config: Config, store: Store, state: SharedState, clock: Clock,
                 push: PushProvider):
        self.config = config
        self.store = store
        self.state = state
        self.clock = clock
        self.push = push
        self.api_keys = ensure_api_keys(config)
        self.stats = NodeStats()
        self.events = EventPublisher(state.bus, config.node_id, clock)
        self.policy = PolicyService(store, config.policy, self.events, clock)
        self.verifier = DeviceTokenVerifier(config.audience, state.replay, clock,
                                            config.token_max_skew_s, config.token_max_lifetime_s)
        self.guard = PushBombGuard(state.guard, self.policy, store, self.events, self.stats, clock)
        self.deps = ActorDeps(config, store, state.presence, self.verifier, self.policy, push,
                              self.events, self.stats, clock)
        self.registry = ActorRegistry(self.deps)
        self.supervisor = ChallengeSupervisor(store, state.bus, self.guard, self.policy, self.registry,
                                              self.events, self.stats, clock)
        self.enrollment = EnrollmentService(store, config, self.events, clock, self._device_revoked,
                                            ws_url=lambda: config.enroll_base_url(self.ws_port))
        self.totp = TotpService(store, SecretSealer(load_or_create_key(config.totp_key, config.data_dir)),
                                config, self.policy, self.events, clock)
        self.deps.supervisor = self.supervisor
        self.deps.enrollment = self.enrollment
        self.gateway = DeviceGateway(config, self.enrollment, self.registry, self.verifier, store,
                                     self.stats, clock, connection_budget(config.max_connections))
        self.api = BackendApi(self)
        self.rpc = RpcServer(config, self.api, state.bus, self.stats)

    @property
    def ws_port(self) -> int:
        return self.gateway.port

    @property
    def rpc_port(self) -> int:
        return self.rpc.port

    async def _device_revoked(self, device: Device, reason: str, notify: bool) -> None:
        await self.supervisor.cancel_for_device(device.device_id, "revoked")
        if notify:
            self.registry.tell(device.device_id, Revoke(reason))

    async def stats_snapshot(self) -> dict[str, Any]:
        snapshot = self.stats.snapshot()
        snapshot.update({
            "node": self.config.node_id,
            "connected_devices": await self.state.presence.count(),
            "connections": len(self.gateway.connections),
            "connection_budget": self.gateway.max_connections,
            "live_actors": self.registry.active_count,
            "open_challenges": await self.state.guard.open_count(self.clock.now_ms()),
            "pending_expiries": len(self.supervisor.expiry),
            "limiter_blocks": self.stats.counters["limiter_blocks"],
            "suspensions": self.stats.counters["suspensions"],
            "subscribers_cut_off": self.state.bus.overflows,
            "rpc_connections": self.rpc.connections,
        })
        return snapshot

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.policy.load()
        async with trio.open_nursery() as nursery:
            await nursery.start(steward, self.config.gc_freeze_s, self.config.gc_full_s)
            await nursery.start(self.registry.run)
            await nursery.start(self.supervisor.run)
            await nursery.start(self.rpc.serve)
            await nursery.start(self.gateway.serve)
            log.info("node %s: devices on ws%s://%s:%d/v1/device, backends on %s:%d (msgpack-RPC%s)",
                     self.config.node_id, "s" if self.config.ws.tls else "", self.config.ws.host,
                     self.ws_port, self.config.rpc.host, self.rpc_port,
                     " over TLS" if self.config.rpc.tls else "")
            task_status.started()

    async def shutdown(self) -> None:
        self.registry.stopping = True
        await self.gateway.close_all()


@asynccontextmanager
async def open_node(
    config: Config,
    *,
    state: SharedState | None = None,
    clock: Clock | None = None,
    push: PushProvider | None = None,
) -> AsyncIterator[Node]:
    """Run a node for the duration of the `async with`; leaving it shuts the node down cleanly."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    async with open_sqlite_store(Path(config.db_path), synchronous=config.store_synchronous) as store:
        node = Node(config, store, state or memory_state(), clock or Clock(), push or RecordingPushProvider())
        async with trio.open_nursery() as nursery:
            await nursery.start(node._run)
            try:
                yield node
            finally:
                with trio.CancelScope(shield=True):
                    await node.shutdown()
                nursery.cancel_scope.cancel()
