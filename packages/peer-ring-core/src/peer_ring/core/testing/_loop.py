"""An event loop whose time is a :class:`FakeClock` and that jumps it when idle.

In the manner of trio's ``MockClock(autojump_threshold=0)``: when every task waits for a
timer (nothing is runnable and no I/O is ready), the loop moves the clock straight to the
next deadline — its own (``asyncio.sleep``, ``wait_for``, ``call_later``) or the fake
clock's (``FakeClock.sleep`` / ``call_later``, which the core uses). A test of timeouts,
suspicion or backoff therefore runs through minutes of fake time in milliseconds, never
sleeps, and is deterministic: time moves only when nothing else can happen.

Usage::

    from peer_ring.core.testing import FakeClock, run

    async def main() -> None:
        await asyncio.sleep(3600)          # returns at once; the clock says an hour passed

    clock = FakeClock()
    run(main(), clock=clock)

or, under pytest-asyncio, a ``pytest_asyncio_loop_factories`` hook in a ``conftest.py``
(see the core README, "Deterministic time").
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from peer_ring.core.testing._fake_clock import FakeClock

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

_T = TypeVar("_T")


class _JumpingSelector(selectors.BaseSelector):
    """A selector that, instead of blocking for a timer, advances the fake clock."""

    def __init__(self, loop: FakeClockEventLoop, threshold: float) -> None:
        self._inner = selectors.DefaultSelector()
        self._loop = loop
        self._threshold = threshold

    def register(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        return self._inner.unregister(fileobj)

    def modify(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def get_map(self) -> Mapping[FileDescriptorLike, selectors.SelectorKey]:
        return self._inner.get_map()

    def close(self) -> None:
        self._inner.close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout <= 0:
            return self._inner.select(timeout)  # callbacks are ready: just poll I/O
        # Nothing is runnable. Real I/O first (sockets, threads waking the loop), for at
        # most the threshold of real time; then time jumps.
        events = self._inner.select(self._threshold)
        if events:
            return events
        loop = self._loop
        clock = loop.clock
        now = clock.monotonic()
        fake = clock.next_deadline()
        if fake is not None and fake <= now:
            clock.advance(0.0)  # fake timers already due are runnable work, not idleness
            return []
        if loop._release_idle_waiters():
            return []  # run_until_idle() callers run before time moves
        targets = [] if timeout is None else [now + timeout]
        if fake is not None:
            targets.append(fake)
        if not targets:
            # No timer at all: only I/O or another thread can wake us (or it is a deadlock,
            # which a real loop would not detect either).
            return self._inner.select(None)
        clock.advance(max(min(targets) - now, 0.0))
        loop.jumps += 1
        return []


class FakeClockEventLoop(asyncio.SelectorEventLoop):
    """An asyncio event loop driven by ``clock`` (see the module docstring).

    Args:
        clock: the fake clock; a new one when omitted (see :attr:`clock`).
        autojump_threshold: real seconds to wait for I/O before jumping when idle. ``0``
            (the default) suits in-memory clusters; give real sockets a little (``0.01``)
            so that time does not race ahead of a reply already on its way.

    ``loop.time()`` is ``clock.monotonic()``. Advancing the clock by hand
    (``clock.advance``) still works: timers of both kinds fire as it passes them.
    """

    def __new__(
        cls, clock: FakeClock | None = None, *, autojump_threshold: float = 0.0
    ) -> FakeClockEventLoop:
        # Checked before the object exists: a half-built loop would fail in __del__.
        if not autojump_threshold >= 0:
            raise ValueError(f"autojump_threshold must be >= 0, got {autojump_threshold!r}")
        return super().__new__(cls)

    def __init__(self, clock: FakeClock | None = None, *, autojump_threshold: float = 0.0) -> None:
        self.clock = clock if clock is not None else FakeClock()
        #: How many times the loop moved the clock because it was idle.
        self.jumps = 0
        self._idle_waiters: list[asyncio.Future[None]] = []
        super().__init__(_JumpingSelector(self, autojump_threshold))

    def time(self) -> float:
        """The fake clock's monotonic time."""
        return self.clock.monotonic()

    def idle(self) -> asyncio.Future[None]:
        """A future resolved the next time nothing is runnable (before time moves)."""
        fut = self.create_future()
        self._idle_waiters.append(fut)
        return fut

    def _release_idle_waiters(self) -> bool:
        waiters, self._idle_waiters = self._idle_waiters, []
        released = False
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
                released = True
        return released


def run(main: Coroutine[Any, Any, _T], *, clock: FakeClock | None = None) -> _T:
    """Run ``main`` on a :class:`FakeClockEventLoop` driven by ``clock`` (like
    ``asyncio.run``), and return its result."""
    with asyncio.Runner(loop_factory=lambda: FakeClockEventLoop(clock)) as runner:
        return runner.run(main)


async def run_until_idle() -> None:
    """Return once every task waits (for a timer, I/O or an event): nothing is runnable.

    The clock does not move. Needs a :class:`FakeClockEventLoop`: on another loop "idle"
    cannot be observed, and the function raises ``RuntimeError`` rather than guess.
    """
    loop = asyncio.get_running_loop()
    if not isinstance(loop, FakeClockEventLoop):
        raise RuntimeError(
            "run_until_idle() needs a FakeClockEventLoop (peer_ring.core.testing.run, or the "
            "pytest-asyncio loop factory); use settle_loop() on another loop"
        )
    await loop.idle()


def current_clock() -> FakeClock:
    """The :class:`FakeClock` of the running :class:`FakeClockEventLoop`.

    Raises:
        RuntimeError: the running loop is not a :class:`FakeClockEventLoop`.
    """
    loop = asyncio.get_running_loop()
    if not isinstance(loop, FakeClockEventLoop):
        raise RuntimeError("the running event loop is not a FakeClockEventLoop")
    return loop.clock
