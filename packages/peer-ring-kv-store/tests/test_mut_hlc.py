"""HLC boundaries the mutation run found untested (tools/mutation, docs/testing.md).

The drift guard's exact limit, the logical counter's exact overflow point, the initial
state, the argument checks at their limits, and the refusal warning's text and rate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from peer_ring.core import TimerHandle
from peer_ring.kv._hlc import HLC
from peer_ring.kv._versions import MAX_LOGICAL, MAX_NODE_ID_BYTES, Version

WALL = 1_700_000_000.0
WALL_US = 1_700_000_000_000_000


class WallClock:
    """Wall and monotonic time the test sets by hand."""

    def __init__(self) -> None:
        self.now = WALL
        self.mono = 1000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    async def sleep(self, seconds: float) -> None:  # pragma: no cover - unused
        raise NotImplementedError

    def call_later(
        self, delay: float, callback: Callable[[], object]
    ) -> TimerHandle:  # pragma: no cover - unused
        raise NotImplementedError


def test_a_fresh_clock_has_issued_nothing() -> None:
    assert HLC(WallClock(), "n1").last == Version(0, 0, "n1")


def test_the_drift_limit_is_exact_to_the_microsecond() -> None:
    hlc = HLC(WallClock(), "n1", max_drift=1.0)
    at_limit = Version(WALL_US + 1_000_000, 5, "far")
    assert hlc.update(at_limit) == Version(WALL_US + 1_000_000, 6, "n1")
    assert hlc.drift_rejections == 0
    hlc = HLC(WallClock(), "n1", max_drift=1.0)
    hlc.update(Version(WALL_US + 1_000_001, 5, "far"))
    assert hlc.drift_rejections == 1
    assert hlc.last == Version(WALL_US, 0, "n1")


def test_arguments_at_their_limits_are_accepted() -> None:
    HLC(WallClock(), "x" * MAX_NODE_ID_BYTES)
    with pytest.raises(ValueError):
        HLC(WallClock(), "x" * (MAX_NODE_ID_BYTES + 1))
    zero = HLC(WallClock(), "n1", max_drift=0)
    assert zero.update(Version(WALL_US, 3, "peer")) == Version(WALL_US, 4, "n1")
    assert zero.drift_rejections == 0
    HLC(WallClock(), "n1", max_drift=0.5)
    with pytest.raises(ValueError):
        HLC(WallClock(), "n1", max_drift=-0.001)


def test_the_logical_counter_reaches_its_maximum_before_borrowing() -> None:
    hlc = HLC(WallClock(), "n1")
    assert hlc.update(Version(WALL_US, MAX_LOGICAL - 1, "peer")) == Version(
        WALL_US, MAX_LOGICAL, "n1"
    )
    # one more event with the wall clock stalled: borrow a microsecond, counter back to 0
    assert hlc.now() == Version(WALL_US + 1, 0, "n1")


def test_a_local_event_also_reaches_the_maximum_before_borrowing() -> None:
    # now() and update() each have their own overflow check (update's is inlined).
    hlc = HLC(WallClock(), "n1")
    hlc.update(Version(WALL_US, MAX_LOGICAL - 2, "peer"))
    assert hlc.now() == Version(WALL_US, MAX_LOGICAL, "n1")
    assert hlc.now() == Version(WALL_US + 1, 0, "n1")


def test_the_refusal_warning_says_how_far_ahead_and_the_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Large enough that a wrong unit divisor would show in the third decimal.
    hlc = HLC(WallClock(), "n1", max_drift=600.0)
    with caplog.at_level(logging.WARNING, logger="peer_ring.kv._hlc"):
        hlc.update(Version(WALL_US + 1_000_250_000, 0, "liar"))
    assert [r.getMessage() for r in caplog.records] == [
        "not adopting a timestamp from liar that is 1000.250 s ahead of the local clock "
        "(max drift 600.000 s; 1 refused so far): check the clocks of the cluster"
    ]


def test_the_refusal_warning_repeats_every_ten_seconds_not_sooner(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = WallClock()
    hlc = HLC(clock, "n1", max_drift=1.0)
    liar = Version(WALL_US + 10_000_000, 0, "liar")
    with caplog.at_level(logging.WARNING, logger="peer_ring.kv._hlc"):
        hlc.update(liar)
        clock.mono += 1.0
        hlc.update(liar)
        assert len(caplog.records) == 1
        clock.mono += 9.0  # exactly 10 s after the first warning
        hlc.update(liar)
    assert len(caplog.records) == 2
    assert hlc.drift_rejections == 3
