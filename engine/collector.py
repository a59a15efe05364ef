"""Keeping Python's cyclic garbage collector from pausing a node full of phones.

A node holding 19,000 phones has a few million long-lived objects. CPython
collects its oldest generation whenever a quarter more objects have
survived into it, and each such collection walks every one of them: pauses
of a second or more, measured here as p99 latency (create -> delivered at
250 challenges/s with 10,000 phones: 1.9 s with the defaults, 0.12 s with
this steward). Every `freeze_every_s` the steward collects what was made
since its last round (cheap: frozen objects are not walked) and freezes the
survivors, so the collector only ever looks at young objects.

A frozen object that later becomes part of a garbage cycle stays until the
next full round, every `full_every_s`, which unfreezes, collects all and
freezes again. The node's own objects make almost no such cycles (a phone
that connects and goes away leaves none; measured with gc.DEBUG_SAVEALL), so
little waits for that round.
"""

from __future__ import annotations

import gc
import logging
import time

import trio

log = logging.getLogger(__name__)


async def steward(freeze_every_s: float, full_every_s: float, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Run until cancelled; with freeze_every_s <= 0 the collector is left as it is."""
    task_status.started()
    if freeze_every_s <= 0:
        return
    gc.collect()
    gc.freeze()
    next_full = trio.current_time() + full_every_s
    try:
        while True:
            await trio.sleep(freeze_every_s)
            if trio.current_time() >= next_full:
                next_full = trio.current_time() + full_every_s
                started = time.perf_counter()
                gc.unfreeze()
                found = gc.collect()
                gc.freeze()
                log.info("full garbage collection: %d unreachable objects, %.0f ms", found,
                         (time.perf_counter() - started) * 1000)
            else:
                gc.collect()
                gc.freeze()
    finally:
        gc.unfreeze()  # hand the objects back to the collector as the node stops
