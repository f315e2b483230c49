"""Per-node clocks of a simulation: one shared fake time, each node's own skew and drift."""

from __future__ import annotations

from collections.abc import Callable

from peer_ring.core import TimerHandle
from peer_ring.core.testing._fake_clock import FakeClock


class SkewedClock:
    """A node's clock: the simulation's fake time, off by ``skew`` and drifting.

    ``time()`` (the wall clock, what versions and expiries use) is the true time plus
    ``skew`` plus ``drift`` seconds per second elapsed. ``monotonic()``, sleeps and timers
    follow the true time: the event loop has one time line, and a node's timeouts being a
    little fast or slow is not what breaks replication, its wall clock is.

    Args:
        base: the simulation's clock (the true time).
        skew: seconds this node's wall clock is ahead (negative: behind).
        drift: wall-clock error gained per true second (``1e-4`` is 100 ppm).
    """

    def __init__(self, base: FakeClock, skew: float = 0.0, drift: float = 0.0) -> None:
        self.base = base
        self.skew = skew
        self.drift = drift

    def time(self) -> float:
        """The node's wall clock: true time + skew + drift * elapsed."""
        mono = self.base.monotonic()
        return self.base.time() + self.skew + self.drift * mono

    def monotonic(self) -> float:
        """The true monotonic time (see the class docs)."""
        return self.base.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Sleep on the simulation's time line."""
        await self.base.sleep(seconds)

    def call_later(self, delay: float, callback: Callable[[], object]) -> TimerHandle:
        """Schedule ``callback`` on the simulation's time line."""
        return self.base.call_later(delay, callback)
