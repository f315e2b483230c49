"""Request deadlines, grouped into ticks so that a request costs no timer of its own.

Arming one ``call_later`` per request (and cancelling it when the answer comes, the usual
case) costs a few microseconds each: a timer object, a heap push, a cancel. At 100k+
requests/s that is a sizeable share of a core. Instead, deadlines are rounded *up* to a
tick of ``resolution`` seconds and an answered request only leaves its tick's dict. A
deadline therefore fires up to ``resolution`` late, never early.

One clock timer per wheel, not one per tick: a timer, its callback and the tick's dict
per 5 ms tick, all alive for the whole request timeout (seconds), were ~800 objects/s
surviving into the oldest GC generation under steady traffic, enough to trigger a full
collection (tens of ms) every few seconds. The wheel keeps a min-heap of its pending ticks
and one timer for the earliest; an answered tick's dict is dropped as soon as it is empty.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from heapq import heappop, heappush
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
    """Schedules :meth:`Expirable.expire` calls on a clock, one armed timer per wheel.

    Args:
        clock: source of time and timers (a fake clock makes deadlines deterministic).
        resolution: tick length in seconds.
    """

    def __init__(self, clock: Clock, resolution: float = DEFAULT_RESOLUTION) -> None:
        self._clock = clock
        self._monotonic = clock.monotonic
        self._resolution = resolution
        #: The tick length and the clock's ``monotonic``, for callers that compute a tick
        #: themselves exactly as :meth:`add` does (see :meth:`add_at`).
        self.resolution = resolution
        self.monotonic = clock.monotonic
        # Each tick's items in a dict, not a set: a dict expires them in the order they
        # were added, a set in the order of their hashes (object addresses, which differ
        # from run to run), and a seeded simulation must replay event for event.
        self._ticks: dict[int, dict[Expirable, None]] = {}
        # Min-heap of the ticks of ``_ticks`` (plain ints, which the GC does not track). It
        # may still hold ticks whose dict was dropped (emptied) or pushed twice (dropped,
        # then added to again): both are skipped when they reach the top.
        self._pending: list[int] = []
        # Armed timers by tick and their min-heap. Usually one: a second one is armed only
        # when a tick earlier than every armed one appears (the later timer is left to
        # fire: cancelling costs as much, and asyncio keeps a cancelled timer queued anyway).
        self._timers: dict[int, TimerHandle] = {}
        self._armed: list[int] = []
        # The tick of the latest add and its dict: requests made together share it. None
        # while there is none: every int is a possible tick (a negative timeout on a clock
        # near 0, as a fake clock is, gives tick 0 or below).
        self._last_tick: int | None = None
        self._last_members: dict[Expirable, None] = {}

    def add(self, item: Expirable, timeout: float) -> int:
        """Expire ``item`` after ``timeout`` seconds (rounded up to a tick); return the tick."""
        now = self._monotonic()
        tick = int((now + timeout) / self._resolution) + 1  # round up: never early
        if tick == self._last_tick:
            self._last_members[item] = None
            return tick
        return self._insert(item, tick, now)

    def add_at(self, item: Expirable, tick: int) -> None:
        """Expire ``item`` at ``tick``, computed by the caller as :meth:`add` does:
        ``int((monotonic() + timeout) / resolution) + 1`` (never early)."""
        if tick == self._last_tick:
            self._last_members[item] = None
        else:
            self._insert(item, tick, self._monotonic())

    def _insert(self, item: Expirable, tick: int, now: float) -> int:
        members = self._ticks.get(tick)
        if members is None:
            if self._last_tick is not None and not self._last_members:
                # The previous latest tick was answered in full: drop it now rather than
                # keep its dict until its deadline (pop: it may have fired already).
                self._ticks.pop(self._last_tick, None)
            members = self._ticks[tick] = {}
            heappush(self._pending, tick)
            armed = self._armed
            if not armed or tick < armed[0]:
                self._arm(tick, now)
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
            if not members:
                del self._ticks[tick]

    def _arm(self, tick: int, now: float) -> None:
        heappush(self._armed, tick)
        delay = max(0.0, tick * self._resolution - now)
        self._timers[tick] = self._clock.call_later(delay, self._fire)

    def _fire(self) -> None:
        # Timers fire in deadline order, so the earliest armed one is the one firing (ties
        # only between timers already due, whose order does not matter).
        fired = heappop(self._armed)
        self._timers.pop(fired, None)
        now = self._monotonic()
        # Every tick up to now, computed from the clock: a late wake-up catches up.
        due = max(fired, int(now / self._resolution))
        pending = self._pending
        ticks = self._ticks
        try:
            while pending and pending[0] <= due:
                tick = heappop(pending)
                if tick == self._last_tick:
                    self._last_tick = None
                members = ticks.pop(tick, None)
                if members:
                    for item in members:
                        item.expire()  # may add or remove deadlines: the heaps are re-read
        finally:
            # Even when an ``expire`` raised: the ticks still due must not wait for the
            # next new tick to arm a timer.
            self._rearm()

    def _rearm(self) -> None:
        pending = self._pending
        ticks = self._ticks
        # Ticks answered in full need no timer: drop them (the latest one too, which
        # ``remove`` keeps on its fast path).
        while pending:
            members = ticks.get(pending[0])
            if members:
                break
            tick = heappop(pending)
            if members is not None:
                del ticks[tick]
                if tick == self._last_tick:
                    self._last_tick = None
        armed = self._armed
        if pending and (not armed or pending[0] < armed[0]):
            self._arm(pending[0], self._monotonic())

    def close(self) -> None:
        """Cancel every timer; pending items are never expired."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._armed.clear()
        self._ticks.clear()
        self._pending.clear()
        self._last_tick = None


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


class GroupOwner(Protocol):
    """The connection whose requests a :class:`DeadlineGroup` holds."""

    def expire_group(self, group: DeadlineGroup) -> None: ...


class DeadlineGroup:
    """The requests of one connection whose deadlines fall in one tick, made one after the
    other: ids ``first`` to ``last``, ``pending`` of them unanswered.

    The group, not each request, is the wheel's item: a request joins the connection's
    current group when its tick is the group's (at 64 requests in flight, dozens per
    5 ms tick), so the wheel's ``add`` and ``remove`` run per group instead of per
    request. When the tick comes, the owner expires those of ``first..last`` still pending
    in this group; a group answered in full leaves the wheel at once.
    """

    __slots__ = ("first", "last", "owner", "pending", "tick")

    def __init__(self, owner: GroupOwner, tick: int, first: int) -> None:
        self.owner = owner
        self.tick = tick
        self.first = first
        self.last = first
        self.pending = 0

    def expire(self) -> None:
        """Called by the deadline wheel at the group's tick."""
        self.owner.expire_group(self)
