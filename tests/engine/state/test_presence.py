"""Which node holds each device's connection, through `Presence` only.

Runs once per param of the `shared_state` fixture (conftest.py).
"""

from __future__ import annotations

import pytest

from engine.state.base import Presence, SharedState

pytestmark = pytest.mark.trio

NOW = 1_700_000_000_000


@pytest.fixture
def presence(shared_state: SharedState) -> Presence:
    return shared_state.presence


async def test_a_connected_device_is_found_where_it_connected(presence: Presence) -> None:
    assert await presence.lookup("phone-1") is None
    assert await presence.count() == 0

    await presence.connected("phone-1", "node-a", "conn-1", NOW)
    await presence.connected("phone-2", "node-b", "conn-2", NOW + 5)

    assert await presence.lookup("phone-1") == ("node-a", "conn-1", NOW)
    assert await presence.lookup("phone-2") == ("node-b", "conn-2", NOW + 5)
    assert await presence.lookup("phone-3") is None
    assert await presence.count() == 2


async def test_disconnecting_forgets_the_device(presence: Presence) -> None:
    await presence.connected("phone-1", "node-a", "conn-1", NOW)
    await presence.connected("phone-2", "node-a", "conn-2", NOW)

    await presence.disconnected("phone-1", "conn-1")

    assert await presence.lookup("phone-1") is None
    assert await presence.lookup("phone-2") == ("node-a", "conn-2", NOW)
    assert await presence.count() == 1


async def test_a_reconnection_replaces_the_old_one(presence: Presence) -> None:
    await presence.connected("phone-1", "node-a", "conn-1", NOW)

    await presence.connected("phone-1", "node-b", "conn-2", NOW + 1_000)

    assert await presence.lookup("phone-1") == ("node-b", "conn-2", NOW + 1_000)
    assert await presence.count() == 1


async def test_a_stale_disconnect_does_not_forget_the_newer_connection(presence: Presence) -> None:
    # The phone moved to node-b before node-a noticed that conn-1 dropped.
    await presence.connected("phone-1", "node-a", "conn-1", NOW)
    await presence.connected("phone-1", "node-b", "conn-2", NOW + 1_000)

    await presence.disconnected("phone-1", "conn-1")

    assert await presence.lookup("phone-1") == ("node-b", "conn-2", NOW + 1_000)
    assert await presence.count() == 1

    await presence.disconnected("phone-1", "conn-2")
    assert await presence.lookup("phone-1") is None
    assert await presence.count() == 0


async def test_disconnecting_an_unknown_device_is_harmless(presence: Presence) -> None:
    await presence.connected("phone-1", "node-a", "conn-1", NOW)

    await presence.disconnected("phone-9", "conn-1")

    assert await presence.lookup("phone-1") == ("node-a", "conn-1", NOW)
    assert await presence.count() == 1
