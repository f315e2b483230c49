"""Hybrid logical clock: monotonic, tracks wall time, receive rule, drift guard."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer_ring.core import TimerHandle
from peer_ring.kv._hlc import HLC
from peer_ring.kv._versions import MAX_LOGICAL, Version


class WallClock:
    """A clock the test sets to any wall time, backwards included (NTP steps)."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now
        self.mono = 0.0

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


def us(seconds: float) -> int:
    return int(seconds * 1_000_000)


def test_now_follows_wall_clock() -> None:
    clock = WallClock()
    hlc = HLC(clock, "n1")
    assert hlc.now() == Version(us(clock.now), 0, "n1")
    clock.now += 0.5
    assert hlc.now() == Version(us(clock.now), 0, "n1")


def test_now_is_strictly_monotonic_when_clock_stalls_or_steps_back() -> None:
    clock = WallClock()
    hlc = HLC(clock, "n1")
    first = hlc.now()
    second = hlc.now()  # same wall time
    clock.now -= 10.0  # NTP step backwards
    third = hlc.now()
    assert first < second < third
    assert second == Version(first.physical, 1, "n1")
    assert third == Version(first.physical, 2, "n1")
    clock.now += 20.0
    assert hlc.now() == Version(us(clock.now), 0, "n1")


def test_receive_adopts_a_remote_clock_ahead() -> None:
    clock = WallClock()
    hlc = HLC(clock, "n1")
    remote = Version(us(clock.now + 5.0), 7, "n2")
    received = hlc.update(remote)
    assert received == Version(remote.physical, 8, "n1")
    after = hlc.now()
    assert after > remote
    assert after == Version(remote.physical, 9, "n1")


def test_receive_of_an_older_remote_only_ticks() -> None:
    clock = WallClock()
    hlc = HLC(clock, "n1")
    local = hlc.now()
    received = hlc.update(Version(local.physical - 100, 50, "n2"))
    assert received == Version(local.physical, 1, "n1")


def test_receive_with_equal_physical_takes_max_logical() -> None:
    clock = WallClock()
    hlc = HLC(clock, "n1")
    local = hlc.now()
    hlc.now()  # logical 1
    assert hlc.update(Version(local.physical, 5, "n2")) == Version(local.physical, 6, "n1")
    assert hlc.update(Version(local.physical, 2, "n2")) == Version(local.physical, 7, "n1")


def test_receive_when_wall_clock_is_ahead_of_both_resets_logical() -> None:
    clock = WallClock()
    hlc = HLC(clock, "n1")
    hlc.update(Version(us(clock.now), 9, "n2"))
    clock.now += 1.0
    assert hlc.update(Version(us(clock.now - 0.5), 3, "n2")) == Version(us(clock.now), 0, "n1")


def test_drift_guard_refuses_far_future_time(caplog: pytest.LogCaptureFixture) -> None:
    clock = WallClock()
    hlc = HLC(clock, "n1", max_drift=60.0)
    bogus = Version(us(clock.now + 3600.0), 0, "broken")
    with caplog.at_level(logging.WARNING, logger="peer_ring.kv._hlc"):
        received = hlc.update(bogus)
    assert received == Version(us(clock.now), 0, "n1")
    assert hlc.now().physical == us(clock.now)  # the local clock was not dragged forward
    assert hlc.drift_rejections == 1
    assert "broken" in caplog.text and "ahead" in caplog.text
    # Within the bound, the remote time is adopted.
    near = Version(us(clock.now + 59.0), 0, "ok")
    assert hlc.update(near) > near


def test_drift_warning_is_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    clock = WallClock()
    hlc = HLC(clock, "n1", max_drift=1.0)
    bogus = Version(us(clock.now + 100.0), 0, "broken")
    with caplog.at_level(logging.WARNING, logger="peer_ring.kv._hlc"):
        for _ in range(5):
            hlc.update(bogus)
        clock.mono += 11.0
        hlc.update(bogus)
    assert hlc.drift_rejections == 6
    assert len(caplog.records) == 2


def test_logical_overflow_moves_physical_on() -> None:
    clock = WallClock()
    hlc = HLC(clock, "n1")
    physical = us(clock.now)
    received = hlc.update(Version(physical, MAX_LOGICAL, "n2"))
    assert received == Version(physical + 1, 0, "n1")
    assert received > Version(physical, MAX_LOGICAL, "n2")


@pytest.mark.parametrize("node_id", ["", "x" * 256, "é" * 128])
def test_rejects_bad_node_ids(node_id: str) -> None:
    with pytest.raises(ValueError, match="node id"):
        HLC(WallClock(), node_id)


def test_rejects_negative_drift() -> None:
    with pytest.raises(ValueError, match="max_drift"):
        HLC(WallClock(), "n1", max_drift=-1.0)


# Each step: ("tick", wall delta) or ("recv", wall delta, remote offset from wall, remote logical)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("tick"), st.floats(-2.0, 2.0)),
        st.tuples(
            st.just("recv"),
            st.floats(-2.0, 2.0),
            st.floats(-5.0, 20.0),
            st.integers(0, 1000),
        ),
    ),
    max_size=60,
)


@settings(deadline=None)
@given(steps)
def test_properties_under_random_events(events: list[tuple[object, ...]]) -> None:
    """Strictly increasing; after a receive within the drift bound, later than the
    remote; never ahead of the largest time seen (wall or adopted remote)."""
    clock = WallClock()
    hlc = HLC(clock, "n1", max_drift=10.0)
    last = hlc.now()
    highest_seen = last.physical
    for event in events:
        assert isinstance(event[1], float)
        clock.now += event[1]
        highest_seen = max(highest_seen, us(clock.now))
        if event[0] == "tick":
            stamp = hlc.now()
        else:
            offset, logical = event[2], event[3]
            assert isinstance(offset, float) and isinstance(logical, int)
            remote = Version(max(0, us(clock.now + offset)), logical, "n2")
            stamp = hlc.update(remote)
            if remote.physical - us(clock.now) <= us(10.0):
                assert stamp > remote
                highest_seen = max(highest_seen, remote.physical)
        assert stamp > last
        assert stamp.physical <= highest_seen
        last = stamp
