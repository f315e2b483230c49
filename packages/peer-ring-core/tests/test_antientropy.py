"""Anti-entropy planning (pure) and the membership view it relies on."""

from __future__ import annotations

import random

from peer_ring.core import Member, Membership, Ring
from peer_ring.core._sync import AntiEntropyPlanner, jittered
from peer_ring.core.testing import FakeClock

NODES = [f"10.0.0.{i}:7101" for i in range(1, 6)]
ME = NODES[0]
P = 64


def test_rounds_are_bounded_and_cover_every_partition() -> None:
    ring = Ring(NODES, P)
    planner = AntiEntropyPlanner(ME, 8)
    mine = ring.partitions_of(ME, 3)
    seen: set[int] = set()
    for _ in range(len(mine) // 8 + 1):
        plan = planner.next_round(ring, 3, lambda p: True, ())
        parts = [p for ps in plan.values() for p in ps]
        assert len(parts) <= 8
        for peer, ps in plan.items():
            assert peer != ME
            assert all(peer in ring.preference_list(p, 3) for p in ps)
        seen.update(parts)
    assert seen == mine


def test_peers_rotate_and_unavailable_or_ineligible_are_skipped() -> None:
    ring = Ring(NODES, P)
    planner = AntiEntropyPlanner(ME, 1000)
    p = min(ring.partitions_of(ME, 3))
    peers = set()
    for _ in range(4):
        plan = planner.next_round(ring, 3, lambda q: q == p, ())
        ((peer, parts),) = plan.items()
        assert parts == [p]
        peers.add(peer)
    assert peers == set(ring.preference_list(p, 3)) - {ME}
    others = set(ring.preference_list(p, 3)) - {ME}
    assert planner.next_round(ring, 3, lambda q: q == p, others) == {}


def test_jitter_stays_within_twenty_percent() -> None:
    rng = random.Random(7)
    values = [jittered(10.0, rng) for _ in range(200)]
    assert min(values) >= 8.0 and max(values) <= 12.0


def test_membership_down_and_left_shrink_the_ring_and_come_back() -> None:
    clock = FakeClock()
    view = Membership(ME, P, clock, 5.0)
    changes: list[tuple[int, int]] = []
    view.add_listener(lambda old, new: changes.append((len(old), len(new))))
    view.update(Member(a) for a in NODES)
    b, c = NODES[1], NODES[2]
    assert view.mark_down(b) and b not in view.ring and view.is_down(b)
    assert not view.mark_down(b)
    assert view.mark_left(c, 42) and c not in view.ring
    assert len(view.members) == 3 and len(view.discovered) == 5
    assert view.left_incarnation(c) == 42
    assert view.mark_up(b) and b in view.ring
    assert view.forget_left(c) and c in view.ring
    assert changes == [(1, 5), (5, 4), (4, 3), (3, 4), (4, 5)]
    assert not view.mark_down(ME)  # never itself


def test_suspicion_streak_is_continuous_only_while_failures_keep_coming() -> None:
    clock = FakeClock()
    view = Membership(ME, P, clock, 2.0)
    view.update(Member(a) for a in NODES)
    b = NODES[1]
    view.suspect(b)
    for _ in range(5):
        clock.advance(1.5)
        view.suspect(b)
    assert view.suspected_for(b) == 7.5
    clock.advance(2.5)  # no failure reported for longer than the suspicion timeout
    assert not view.is_suspected(b)
    view.suspect(b)
    assert view.suspected_for(b) == 0.0
    assert view.clear(b) and not view.clear(b)
