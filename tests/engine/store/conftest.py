"""Fixtures that run the store tests against every `Store` implementation.

`store_factory` gives a callable that opens a store on a persistent location:
calling it again opens the same database, which is how the restart tests
reopen. A new implementation adds a param here and must pass
tests/engine/store/test_conformance.py unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from engine.store.base import Store
from engine.store.sqlite import open_sqlite_store

StoreFactory = Callable[[], AbstractAsyncContextManager[Store]]


@pytest.fixture(params=["sqlite"], ids=["sqlite"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    if request.param == "sqlite":
        # A subdirectory that does not exist yet: opening must create it.
        path = tmp_path / "data" / "pushguard.sqlite3"
        return lambda: open_sqlite_store(path)
    raise AssertionError(f"no factory for store {request.param!r}")


@pytest.fixture
async def store(store_factory: StoreFactory) -> AsyncIterator[Store]:
    async with store_factory() as opened:
        yield opened
