"""Letting a frame fill up before the single writer cuts it.

Each grpc.aio message costs far more CPU than the operations inside it (on 2 cores,
~190 µs per message against ~20 µs per operation, see docs/benchmarks.md). When a writer
wakes up for the first queued item and sends at once, a closed-loop workload settles into
one or two operations per frame: the tasks woken by the previous response frame have not
yet queued their next request. Yielding to the event loop a few times lets them do so.
The loop stops as soon as one turn queues nothing new, so a lone request pays one loop
turn of latency, not ``MAX_YIELDS``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

#: Upper bound of event-loop turns a writer waits for more items (3-10 measured best).
MAX_YIELDS = 8


async def linger(size: Callable[[], int], max_yields: int = MAX_YIELDS) -> None:
    """Yield to the loop while the queue measured by ``size`` keeps growing."""
    before = size()
    for _ in range(max_yields):
        await asyncio.sleep(0)
        now = size()
        if now == before:
            return
        before = now
