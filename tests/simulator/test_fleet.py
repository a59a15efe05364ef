"""Fleet files (saved, reloaded, refused when bad) and enrolling a fleet through the real flow."""

from __future__ import annotations

import json
import stat

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from simulator.fleet import FLEET_VERSION, FleetEntry, enroll_fleet, load_fleet, save_fleet
from simulator.resources import source_addresses
from tests.conftest import ws_url

pytestmark = pytest.mark.trio

URL = "ws://127.0.0.1:8765/v1/device"


def entries(n: int) -> list[FleetEntry]:
    return [FleetEntry(f"user-{i}", f"dev_{i:04d}", Ed25519PrivateKey.generate().private_bytes_raw(), "pushguard")
            for i in range(n)]


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_save_and_load_round_trip(tmp_path):
    fleet = entries(5)
    path = tmp_path / "sub" / "fleet.json"
    save_fleet(path, URL, fleet)
    assert mode(path) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["fleet.json"]  # no temporary left behind
    url, loaded = load_fleet(path)
    assert url == URL
    assert loaded == fleet
    data = json.loads(path.read_text())
    assert data["version"] == FLEET_VERSION and len(data["phones"]) == 5


async def test_saving_over_a_readable_file_makes_it_private(tmp_path):
    path = tmp_path / "fleet.json"
    path.write_text("{}")
    path.chmod(0o644)
    save_fleet(path, URL, entries(2))
    assert mode(path) == 0o600
    assert len(load_fleet(path)[1]) == 2


async def test_an_empty_fleet_round_trips(tmp_path):
    path = tmp_path / "fleet.json"
    save_fleet(path, URL, [])
    assert load_fleet(path) == (URL, [])


@pytest.mark.parametrize("content", [
    "",
    "not json",
    "[]",
    '"a string"',
    "null",
    json.dumps({"version": 2, "ws_url": URL, "phones": []}),
    json.dumps({"ws_url": URL, "phones": []}),
    json.dumps({"version": FLEET_VERSION, "ws_url": URL}),
    json.dumps({"version": FLEET_VERSION, "phones": []}),
    json.dumps({"version": FLEET_VERSION, "ws_url": URL, "phones": [{"user": "u", "device": "d"}]}),
    json.dumps({"version": FLEET_VERSION, "ws_url": URL, "phones": ["x"]}),
    json.dumps({"version": FLEET_VERSION, "ws_url": URL, "phones": 3}),
    json.dumps({"version": FLEET_VERSION, "ws_url": URL,  # a truncated key
                "phones": [{"user": "u", "device": "d", "audience": "a", "key": "abc"}]}),
])
async def test_a_bad_fleet_file_is_a_value_error(tmp_path, content):
    path = tmp_path / "fleet.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="fleet"):
        load_fleet(path)


async def test_a_missing_fleet_file_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="not a fleet file"):
        load_fleet(tmp_path / "nope.json")


async def test_wrong_version_is_named(tmp_path):
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps({"version": 99, "ws_url": URL, "phones": []}))
    with pytest.raises(ValueError, match="version 99"):
        load_fleet(path)


async def test_enroll_fleet_through_the_real_flow_then_reconnect_from_the_file(node, rpc, tmp_path):
    users = [f"fleet-{i}" for i in range(12)]
    addresses = source_addresses(3)
    enrolled = []
    fleet = await enroll_fleet(rpc, ws_url(node), users, local_address=lambda i: addresses[i % 3],
                               concurrency=4, on_enrolled=lambda: enrolled.append(1))
    assert [e.user_id for e in fleet] == users
    assert len({e.device_id for e in fleet}) == 12
    assert len({e.key for e in fleet}) == 12
    assert len(enrolled) == 12
    path = tmp_path / "fleet.json"
    save_fleet(path, ws_url(node), fleet)
    url, loaded = load_fleet(path)
    assert url == ws_url(node) and loaded == fleet
    async with trio.open_nursery() as nursery:
        for entry in loaded[:4]:
            phone = entry.phone(url, nursery, local_address=addresses[0])
            welcome = await phone.hello()
            assert not welcome.pending
            await phone.close()
    for user in users[:2]:
        created = await rpc.call("challenge.create", user, {"kind": "login", "name": "fleet test"}, None,
                                 {"ttl_s": 5})
        assert created["challenge_id"].startswith("ch_")
