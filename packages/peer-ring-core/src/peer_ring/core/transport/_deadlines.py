"""Request deadlines, grouped into ticks so that a request costs no timer of its own.

Arming one ``call_later`` per request (and cancelling it when the answer comes, the usual
case) costs a few microseconds each: a timer object, a heap push, a cancel. At 100k+
requests/s that is a sizeable share of a core. Instead, deadlines are rounded *up* to a
tick of ``resolution`` seconds; all requests that expire in the same tick share one clock
timer, and an answered request only leaves its tick's set. A deadline therefore fires up to
``resolution`` late, never early.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from peer_ring.core._clock import Clock, TimerHandle
from peer_ring.core._errors import RequestTimeoutError
from peer_ring.core._types import TransferRequest

T = TypeVar("T")

#: Default tick length: deadlines fire at most this much late.
DEFAULT_RESOLUTION = 0.005


class Expirable(Protocol):
    """Something with a deadline: told when it passes. Must be hashable."""

    def expire(self) -> None: ...


class DeadlineWheel:
    """Schedules :meth:`Expirable.expire` calls on a clock, one timer per tick.

    Args:
        clock: source of time and timers (a fake clock makes deadlines deterministic).
        resolution: tick length in seconds.
    """

    def __init__(self, clock: Clock, resolution: float = DEFAULT_RESOLUTION) -> None:
        self._clock = clock
        self._monotonic = clock.monotonic
        self._resolution = resolution
        # Each tick's items in a dict, not a set: a dict expires them in the order they
        # were added, a set in the order of their hashes (object addresses, which differ
        # from run to run), and a seeded simulation must replay event for event.
        self._ticks: dict[int, dict[Expirable, None]] = {}
        self._timers: dict[int, TimerHandle] = {}
        # The tick of the latest add and its set: requests made together share it.
        self._last_tick = 0
        self._last_members: dict[Expirable, None] = {}

    def add(self, item: Expirable, timeout: float) -> int:
        """Expire ``item`` after ``timeout`` seconds (rounded up to a tick); return the tick."""
        now = self._monotonic()
        tick = int((now + timeout) / self._resolution) + 1  # round up: never early
        if tick == self._last_tick:
            self._last_members[item] = None
            return tick
        members = self._ticks.get(tick)
        if members is None:
            members = self._ticks[tick] = {}
            delay = max(0.0, tick * self._resolution - now)
            self._timers[tick] = self._clock.call_later(delay, self._firer(tick))
        members[item] = None
        self._last_tick = tick
        self._last_members = members
        return tick

    def remove(self, item: Expirable, tick: int) -> None:
        """Forget ``item`` (answered or abandoned) without expiring it."""
        if tick == self._last_tick:
            self._last_members.pop(item, None)
            return
        members = self._ticks.get(tick)
        if members is not None:
            members.pop(item, None)

    def _firer(self, tick: int) -> Callable[[], None]:
        def fire() -> None:
            if tick == self._last_tick:
                self._last_tick = 0
            self._timers.pop(tick, None)
            members = self._ticks.pop(tick, None)
            if members:
                for item in members:
                    item.expire()

        return fire

    def close(self) -> None:
        """Cancel every timer; pending items are never expired."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._ticks.clear()
        self._last_tick = 0


async def read_chunk_within(
    read: Awaitable[T], clock: Clock, seconds: float, peer: str, request: TransferRequest
) -> T:
    """Await one read of a transfer, failing with ``RequestTimeoutError`` after ``seconds``.

    Both transports read a partition transfer chunk by chunk; a peer that goes silent
    mid-transfer must not hold the pull forever (the node's clock bounds it, so fake
    clocks drive it in tests).
    """
    task = asyncio.ensure_future(read)
    expired = False

    def on_timeout() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = clock.call_later(seconds, on_timeout)
    try:
        return await task
    except asyncio.CancelledError:
        if expired:
            raise RequestTimeoutError(
                f"transfer of {request.namespace}/{request.partition} from {peer}: "
                f"no chunk within {seconds:g}s"
            ) from None
        raise
    finally:
        timer.cancel()
