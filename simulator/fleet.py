"""A fleet of simulated phones: enrolled through the real flow, saved, reused.

Enrolling 10,000 phones takes a while; a fleet file keeps each phone's user,
device id and private key so the next run against the same node (same data
directory) reconnects them instead. The file holds private keys of
simulated devices only: it is a test artefact, written with mode 0600.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from engine.rpc_client import RpcClient
from simulator.device import SimPhone

FLEET_VERSION = 1


@dataclass(frozen=True, slots=True)
class FleetEntry:
    user_id: str
    device_id: str
    key: bytes  # raw Ed25519 private key
    audience: str

    def phone(self, url: str, nursery: trio.Nursery, **options) -> SimPhone:
        return SimPhone(url, nursery, key=Ed25519PrivateKey.from_private_bytes(self.key),
                        device_id=self.device_id, account=self.user_id, audience=self.audience, **options)


def entry_to_json(entry: FleetEntry) -> dict[str, str]:
    return {"user": entry.user_id, "device": entry.device_id, "audience": entry.audience,
            "key": base64.urlsafe_b64encode(entry.key).decode().rstrip("=")}


def entry_from_json(data: dict[str, str]) -> FleetEntry:
    return FleetEntry(data["user"], data["device"], base64.urlsafe_b64decode(data["key"] + "=="), data["audience"])


def save_fleet(path: Path, ws_url: str, entries: list[FleetEntry]) -> None:
    data = {"version": FLEET_VERSION, "ws_url": ws_url, "phones": [entry_to_json(e) for e in entries]}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle)
    temporary.replace(path)


def load_fleet(path: Path) -> tuple[str, list[FleetEntry]]:
    """(the websocket URL the fleet enrolled on, its phones).

    Raises:
        ValueError: not a fleet file of this version.
    """
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        if data.get("version") != FLEET_VERSION:
            raise ValueError(f"{path}: fleet file version {data.get('version')!r}, expected {FLEET_VERSION}")
        entries = [entry_from_json(p) for p in data["phones"]]
        for entry in entries:
            Ed25519PrivateKey.from_private_bytes(entry.key)
        ws_url = data["ws_url"]
    except (OSError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ValueError) and "fleet file version" in str(exc):
            raise
        raise ValueError(f"{path}: not a fleet file ({exc})") from None
    return ws_url, entries


def entry_of(phone: SimPhone) -> FleetEntry:
    assert phone.device_id and phone.account and phone.audience
    return FleetEntry(phone.account, phone.device_id, phone.key.private_bytes_raw(), phone.audience)


async def enroll_fleet(rpc: RpcClient, ws_url: str, user_ids: list[str], *,
                       local_address: Callable[[int], str | None] = lambda i: None,
                       concurrency: int = 100, on_enrolled: Callable[[], None] | None = None) -> list[FleetEntry]:
    """Enroll one phone for each user through the real flow (begin_enrollment,
    then `enroll` on a websocket); the phones are left disconnected.

    Raises:
        simulator.device.PhoneRejected, engine.rpc_client.RemoteError: a step failed.
    """
    entries: list[FleetEntry | None] = [None] * len(user_ids)
    limiter = trio.CapacityLimiter(concurrency)

    async def one(index: int, user_id: str, nursery: trio.Nursery) -> None:
        async with limiter:
            started = await rpc.call("push.begin_enrollment", user_id, {})
            phone = SimPhone(ws_url, nursery, local_address=local_address(index))
            try:
                await phone.enroll(started["uri"])
            finally:
                await phone.close()
            entries[index] = entry_of(phone)
            if on_enrolled is not None:
                on_enrolled()

    async with trio.open_nursery() as phones, trio.open_nursery() as work:
        for index, user_id in enumerate(user_ids):
            work.start_soon(one, index, user_id, phones)
    return [e for e in entries if e is not None]
