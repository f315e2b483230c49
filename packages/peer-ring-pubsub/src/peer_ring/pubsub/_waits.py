"""Waits of the sequencer's long-polls: on several partitions at once (with group requests
parked for the next APPEND), on one partition's event, and on two things in turn."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Sequence

from peer_ring.core import Clock
from peer_ring.pubsub._leader_state import Leader, Parked
from peer_ring.pubsub._wire import FetchRequest


async def both(first: Awaitable[None] | None, second: Awaitable[None]) -> None:
    """Await ``first`` (when given), then ``second``."""
    if first is not None:
        await first
    await second


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def wait_any(
    clock: Clock,
    leaders: list[Leader],
    timeout: float,
    parks: Sequence[tuple[Leader, FetchRequest]] = (),
) -> list[Parked]:
    """Wait until one of ``leaders`` notifies or ``timeout``; meanwhile each group
    request of ``parks`` is parked on its leader, so an APPEND leaving before the wake
    may claim for it (returned with ``reply`` set: await ``committed``, then hand the
    reply out, or the claim is lost until its ``ack_wait`` ends)."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    handle = clock.call_later(timeout, functools.partial(_resolve, done))
    for leader in leaders:
        leader.waiters.add(done)
    parked = [(leader, Parked(req, done)) for leader, req in parks]
    for leader, park in parked:
        leader.parked.append(park)
    try:
        await done
    finally:
        handle.cancel()
        for leader in leaders:
            leader.waiters.discard(done)
        for leader, park in parked:
            leader.parked.remove(park)
    return [park for _, park in parked]


async def wait_event(clock: Clock, event: asyncio.Event, timeout: float) -> None:
    """Wait until ``event`` is set or ``timeout`` passed."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def fire() -> None:
        if not done.done():
            done.set_result(None)

    handle = clock.call_later(timeout, fire)
    waiter = asyncio.ensure_future(event.wait())
    waiter.add_done_callback(lambda _: fire())
    try:
        await done
    finally:
        handle.cancel()
        waiter.cancel()
