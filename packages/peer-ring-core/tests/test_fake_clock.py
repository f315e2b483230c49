"""FakeClock: timers and sleeps fire in deadline order, only when time is advanced."""

from __future__ import annotations

import asyncio

import pytest

from peer_ring.core.testing import FakeClock


async def test_timers_fire_in_order_when_advanced() -> None:
    clock = FakeClock(start=100.0)
    fired: list[tuple[str, float]] = []
    clock.call_later(2.0, lambda: fired.append(("b", clock.time())))
    clock.call_later(1.0, lambda: fired.append(("a", clock.time())))
    cancelled = clock.call_later(1.5, lambda: fired.append(("x", clock.time())))
    cancelled.cancel()
    assert clock.advance(0.5) == 0
    assert fired == []
    assert clock.advance(2.0) == 2
    assert fired == [("a", 101.0), ("b", 102.0)]
    assert clock.time() == 102.5
    assert clock.monotonic() == pytest.approx(2.5)


async def test_sleep_wakes_only_after_advance() -> None:
    clock = FakeClock()
    task = asyncio.create_task(clock.sleep(10))
    await clock.advance_async(9.9)
    assert not task.done()
    await clock.advance_async(0.1)
    assert task.done()
    assert clock.pending_timers == 0


async def test_cannot_go_backwards() -> None:
    with pytest.raises(ValueError):
        FakeClock().advance(-1)
