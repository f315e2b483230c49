"""Clocks: the only source of time for the core, so tests can replace it.

The :class:`Clock` protocol is what every time-dependent component takes in its
constructor. :class:`SystemClock` is the real default; :class:`peer_ring.core.testing.FakeClock`
lets a test jump time forward without sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from time import monotonic as _monotonic
from time import time as _time
from typing import Protocol


class TimerHandle(Protocol):
    """A scheduled callback that can be cancelled."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """Time as seen by one node."""

    def time(self) -> float:
        """Wall-clock seconds since the epoch (for versions and TTLs)."""
        ...

    def monotonic(self) -> float:
        """Monotonic seconds (for deadlines and intervals)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...

    def call_later(self, delay: float, callback: Callable[[], object]) -> TimerHandle:
        """Run ``callback`` after ``delay`` seconds of this clock's time."""
        ...


class SystemClock:
    """The real clock: ``time.time``, the event loop's monotonic time and timers."""

    # The C functions themselves, not methods calling them: both are read on the request
    # path (deadlines, versions), and a wrapper would add a Python frame to every read.
    #: Wall-clock seconds since the epoch (``time.time``).
    time = staticmethod(_time)
    #: Monotonic seconds (``time.monotonic``).
    monotonic = staticmethod(_monotonic)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def call_later(self, delay: float, callback: Callable[[], object]) -> TimerHandle:
        return asyncio.get_running_loop().call_later(delay, callback)
