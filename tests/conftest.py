"""Fixtures shared by the end-to-end tests: a real node on 127.0.0.1 and clients."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from engine.config import Config, Listener, Policy
from engine.node import Node, open_node
from engine.rpc_client import RpcClient
from simulator.device import SimPhone


def node_config(data_dir: Path, **overrides: Any) -> Config:
    """A config for tests: loopback, ephemeral ports, quick timeouts."""
    base = Config(
        data_dir=data_dir,
        ws=Listener(port=0),
        rpc=Listener(port=0),
        heartbeat_s=5,
        heartbeat_timeout_s=5,
        hello_timeout_s=5,
        store_synchronous="NORMAL",
        policy=Policy(ack_timeout_s=5),
    )
    return dataclasses.replace(base, **overrides)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return node_config(tmp_path / "node")


@pytest.fixture
async def node(config: Config) -> AsyncIterator[Node]:
    async with open_node(config) as running:
        yield running


def operator_key(node: Node) -> str:
    return next(iter(node.api_keys))


@asynccontextmanager
async def rpc_client(node: Node, api_key: str | None = None) -> AsyncIterator[RpcClient]:
    async with RpcClient.connect("127.0.0.1", node.rpc_port,
                                 api_key=api_key or operator_key(node)) as client:
        yield client


@pytest.fixture
async def rpc(node: Node) -> AsyncIterator[RpcClient]:
    async with rpc_client(node) as client:
        yield client


def ws_url(node: Node) -> str:
    return f"ws://127.0.0.1:{node.ws_port}/v1/device"


async def enrolled_phone(node: Node, rpc: RpcClient, nursery: trio.Nursery, user_id: str,
                         **phone_args: Any) -> SimPhone:
    """A phone enrolled for `user_id` through the real flow and authenticated."""
    started = await rpc.call("push.begin_enrollment", user_id, {})
    phone = SimPhone(ws_url(node), nursery, **phone_args)
    await phone.enroll(started["uri"])
    await phone.hello()
    return phone
