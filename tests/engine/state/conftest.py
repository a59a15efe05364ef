"""Fixtures that run the shared-state tests against every `SharedState` implementation.

`shared_state` gives a fresh bundle for each test. A new implementation (Redis)
adds a param here and must pass the tests in this folder unchanged: they use
only the interfaces of engine/state/base.py, pass every time explicitly and
never look inside an implementation.
"""

from __future__ import annotations

import pytest

from engine.state.base import SharedState
from engine.state.memory import memory_state


@pytest.fixture(params=["memory"], ids=["memory"])
def shared_state(request: pytest.FixtureRequest) -> SharedState:
    if request.param == "memory":
        return memory_state()
    raise AssertionError(f"no factory for shared state {request.param!r}")
