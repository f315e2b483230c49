"""The membership view's state machine (down, left, suspicion) and ExecuteResult's
completion callbacks: pure, on a fake clock."""

from __future__ import annotations

import logging

import pytest

from peer_ring.core import ExecuteResult, QuorumNotReachedError, Reply
from peer_ring.core._membership import Membership
from peer_ring.core._types import Member
from peer_ring.core.testing import FakeClock

ME, B, C = "a:1", "b:1", "c:1"


def view(clock: FakeClock, *peers: str) -> Membership:
    m = Membership(ME, 16, clock, suspicion_timeout=5.0)
    m.update(Member(a) for a in (ME, *peers))
    return m


def test_only_discovered_peers_other_than_self_go_down_or_leave() -> None:
    m = view(FakeClock(), B, C)
    assert not m.mark_down(ME) and not m.mark_down("stranger:1")
    assert not m.mark_left(ME, 1) and not m.mark_left("stranger:1", 1)
    m.suspect(ME)
    m.suspect("stranger:1")
    assert m.suspected == frozenset()
    assert sorted(m.ring.members) == [ME, B, C]


def test_down_and_up_change_the_ring_once_each() -> None:
    m = view(FakeClock(), B, C)
    changes: list[tuple[int, int]] = []
    m.add_listener(lambda old, new: changes.append((len(old), len(new))))
    assert not m.mark_up(B)  # not down: nothing to undo
    assert m.mark_down(B) and not m.mark_down(B)
    assert m.down == {B} and m.is_down(B) and B not in m.members
    assert m.mark_up(B) and not m.mark_up(B)
    assert changes == [(3, 2), (2, 3)]


def test_leave_is_per_incarnation_and_a_restart_comes_back() -> None:
    m = view(FakeClock(), B, C)
    departed: list[str] = []
    m.add_departure_listener(departed.append)
    assert not m.forget_left(B)  # it never left
    assert m.mark_left(B, 7)
    assert not m.mark_left(B, 7)  # the same announcement again: no change, no departure
    assert m.left == {B} and m.left_incarnation(B) == 7 and departed == [B]
    assert m.forget_left(B)
    assert m.left_incarnation(B) is None and B in m.members


def test_a_failing_departure_listener_does_not_stop_the_view(
    caplog: pytest.LogCaptureFixture,
) -> None:
    m = view(FakeClock(), B, C)
    seen: list[str] = []

    def broken(address: str) -> None:
        raise RuntimeError("listener bug")

    m.add_departure_listener(broken)
    m.add_departure_listener(seen.append)
    with caplog.at_level(logging.ERROR, logger="peer_ring.core._membership"):
        assert m.update([Member(ME), Member(C)])  # B departs
        assert m.update([Member(ME)])  # then C: later snapshots still apply
    assert seen == [B, C]
    assert sorted(m.ring.members) == [ME]
    failures = [r for r in caplog.records if "departure listener failed" in r.getMessage()]
    assert len(failures) == 2


def test_suspicion_streaks_expire_and_restart() -> None:
    clock = FakeClock()
    m = view(clock, B)
    m.suspect(B)
    clock.advance(4.0)
    m.suspect(B)  # within the timeout: the same streak
    assert m.suspected_for(B) == pytest.approx(4.0)
    clock.advance(5.5)  # past the timeout since the last failure: expired
    assert not m.is_suspected(B) and m.suspected_for(B) == 0.0
    m.suspect(B)  # a new streak starts now
    clock.advance(1.0)
    assert m.suspected_for(B) == pytest.approx(1.0)
    assert m.clear(B) and not m.clear(B)
    # A failure long after the last one starts a new streak even if nobody looked between.
    m.suspect(B)
    clock.advance(6.0)
    m.suspect(B)
    assert m.suspected_for(B) == 0.0


# -- ExecuteResult -------------------------------------------------------------------------


def test_completion_callbacks_run_once_each_even_when_added_late() -> None:
    result = ExecuteResult(3, (ME, B), b"k")
    calls: list[tuple[str, int]] = []
    result.on_complete(lambda replies: calls.append(("first", len(replies))))
    result.on_complete(lambda replies: calls.append(("second", len(replies))))
    result.replies.append(Reply(ME, b"v", None))
    result.replies.append(Reply(B, b"", QuorumNotReachedError("t", "put", 2, [], {})))
    result._finish()
    result.on_complete(lambda replies: calls.append(("late", len(replies))))
    assert calls == [("first", 2), ("second", 2), ("late", 2)]
    assert repr(result) == "ExecuteResult(key=b'k', ok, replies=2)"
    result.error = QuorumNotReachedError("t", "put", 2, [], {})
    assert repr(result).startswith("ExecuteResult(key=b'k', error=QuorumNotReachedError(")
