"""Core test configuration: the fake-time event loop for tests marked ``fake_time``.

A test (or module, with ``pytestmark``) marked ``@pytest.mark.fake_time`` runs on a
:class:`~peer_ring.core.testing.FakeClockEventLoop`: the loop's time is a fresh
:class:`~peer_ring.core.testing.FakeClock` (the ``loop_clock`` fixture), and whenever no
task can run the clock jumps to the next timer. Timeouts, suspicion and backoff of
minutes then take milliseconds, and never depend on the machine's speed. Other tests run
on the default asyncio loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest

from peer_ring.core.testing import FakeClock, FakeClockEventLoop, current_clock


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """One loop factory per test: the fake-time loop for ``fake_time`` tests."""
    if item.get_closest_marker("fake_time") is not None:
        return {"fake_time": FakeClockEventLoop}
    return {"asyncio": asyncio.new_event_loop}


@pytest.fixture
async def loop_clock() -> FakeClock:
    """The fake clock that drives the running loop (``fake_time`` tests only)."""
    return current_clock()
