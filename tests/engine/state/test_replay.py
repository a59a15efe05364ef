"""Replay protection for device tokens, through `ReplayCache` only.

Runs once per param of the `shared_state` fixture (conftest.py).
"""

from __future__ import annotations

import pytest

from engine.state.base import ReplayCache, SharedState

pytestmark = pytest.mark.trio

NOW = 1_700_000_000_000
TTL = 240_000


@pytest.fixture
def replay(shared_state: SharedState) -> ReplayCache:
    return shared_state.replay


async def test_a_key_is_claimed_once_within_its_ttl(replay: ReplayCache) -> None:
    assert await replay.claim("jti:phone-1:abc", TTL, NOW) is True
    assert await replay.claim("jti:phone-1:abc", TTL, NOW) is False
    assert await replay.claim("jti:phone-1:abc", TTL, NOW + TTL - 1) is False


async def test_a_key_can_be_claimed_again_after_its_ttl(replay: ReplayCache) -> None:
    assert await replay.claim("k", TTL, NOW) is True

    assert await replay.claim("k", TTL, NOW + TTL) is True
    # The second claim starts a new ttl of its own.
    assert await replay.claim("k", TTL, NOW + 2 * TTL - 1) is False
    assert await replay.claim("k", TTL, NOW + 2 * TTL) is True


async def test_a_refused_claim_does_not_extend_the_ttl(replay: ReplayCache) -> None:
    assert await replay.claim("k", TTL, NOW) is True
    assert await replay.claim("k", TTL, NOW + TTL - 1) is False

    assert await replay.claim("k", TTL, NOW + TTL) is True


async def test_distinct_keys_are_independent(replay: ReplayCache) -> None:
    assert await replay.claim("jti:phone-1:abc", TTL, NOW) is True
    assert await replay.claim("jti:phone-2:abc", TTL, NOW) is True
    assert await replay.claim("jti:phone-1:abd", TTL, NOW + 1) is True

    assert await replay.claim("jti:phone-1:abc", TTL, NOW + 2) is False
    assert await replay.claim("jti:phone-2:abc", TTL, NOW + 2) is False


async def test_each_key_keeps_its_own_ttl(replay: ReplayCache) -> None:
    assert await replay.claim("short", 1_000, NOW) is True
    assert await replay.claim("long", 10_000, NOW) is True

    assert await replay.claim("short", 1_000, NOW + 1_000) is True
    assert await replay.claim("long", 10_000, NOW + 1_000) is False
