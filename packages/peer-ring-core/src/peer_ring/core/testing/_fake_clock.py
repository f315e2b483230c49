"""A controllable clock for deterministic tests (in the manner of trio's ``MockClock``)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable


class _Timer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A clock whose time moves only when the test says so.

    ``time()`` and ``monotonic()`` start at ``start`` and advance together with
    :meth:`advance`. Timers (``call_later``) and sleepers (``sleep``) fire, in deadline
    order, when time is advanced past their deadline. Nothing ever waits for real time.

    Example:
        clock = FakeClock()
        task = asyncio.create_task(clock.sleep(10))
        await clock.advance_async(10)   # the sleep is over, without waiting
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        # Monotonic seconds since creation, kept apart from ``start``: near 1.7e9 a float
        # only resolves ~2e-7 s, and tiny steps (an event loop's timers) would be lost.
        self._mono = 0.0
        self._start = start
        self._timers: list[tuple[float, int, _Timer]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        """Wall-clock seconds (starts at ``start``)."""
        return self._start + self._mono

    def monotonic(self) -> float:
        """Monotonic seconds since the clock was created."""
        return self._mono

    def call_later(self, delay: float, callback: Callable[[], object]) -> _Timer:
        """Schedule ``callback`` for ``delay`` fake seconds from now."""
        timer = _Timer(self._mono + max(0.0, delay), callback)
        heapq.heappush(self._timers, (timer.when, next(self._seq), timer))
        return timer

    async def sleep(self, seconds: float) -> None:
        """Wait until the clock has been advanced by ``seconds``."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        timer = self.call_later(seconds, wake)
        try:
            await fut
        finally:
            timer.cancel()

    def advance(self, seconds: float) -> int:
        """Move time forward by ``seconds``, firing due timers in order; returns how many fired."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        target = self._mono + seconds
        fired = 0
        while self._timers and self._timers[0][0] <= target:
            when, _, timer = heapq.heappop(self._timers)
            self._mono = max(self._mono, when)
            if not timer.cancelled:
                timer.callback()
                fired += 1
        self._mono = target
        return fired

    async def advance_async(self, seconds: float, *, settle: int = 20) -> int:
        """Advance like :meth:`advance`, then let woken coroutines run ``settle`` loop turns."""
        await settle_loop(settle)
        fired = self.advance(seconds)
        await settle_loop(settle)
        return fired

    def next_deadline(self) -> float | None:
        """The monotonic time of the earliest timer not yet fired or cancelled (or None)."""
        timers = self._timers
        while timers and timers[0][2].cancelled:
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    @property
    def pending_timers(self) -> int:
        """Timers scheduled and not yet fired or cancelled."""
        return sum(1 for _, _, t in self._timers if not t.cancelled)


async def settle_loop(turns: int = 20) -> None:
    """Give the event loop ``turns`` iterations so ready callbacks and tasks run."""
    for _ in range(turns):
        await asyncio.sleep(0)
