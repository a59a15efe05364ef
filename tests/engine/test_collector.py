"""The garbage-collector steward: survivors are frozen each round, garbage still goes."""

from __future__ import annotations

import gc
import weakref

import pytest
import trio

from engine.collector import steward

pytestmark = pytest.mark.trio


class Node:
    """Something with a reference cycle, as long-lived objects often have."""

    def __init__(self) -> None:
        self.me = self


async def test_rounds_freeze_survivors_and_collect_garbage(autojump_clock):
    async with trio.open_nursery() as nursery:
        await nursery.start(steward, 10.0, 100.0)
        assert gc.get_freeze_count() > 0
        young = Node()
        garbage = weakref.ref(Node())  # a cycle nobody holds
        frozen_before = gc.get_freeze_count()
        await trio.sleep(10.5)
        assert garbage() is None  # collected in the round
        assert gc.get_freeze_count() > frozen_before  # the survivor was frozen
        # A frozen object that turns into garbage waits for the full round.
        late = weakref.ref(young)
        del young
        await trio.sleep(10)
        assert late() is not None
        await trio.sleep(90)
        assert late() is None
        nursery.cancel_scope.cancel()
    assert gc.get_freeze_count() == 0  # handed back when the steward stops


async def test_zero_leaves_the_collector_alone():
    async with trio.open_nursery() as nursery:
        await nursery.start(steward, 0, 100.0)
        assert gc.get_freeze_count() == 0
        nursery.cancel_scope.cancel()
