"""Consumer group operations pinned to exact states (tools/mutation found them loose).

test_group_properties.py checks the semilattice laws and the delivery story; these pin the
exact delta or state each operation produces: adoption of orphans after a takeover, the
release of a closing consumer, copies, counts and the dead-letter delta.
"""

from __future__ import annotations

from peer_ring.pubsub._group import GroupState, Pending


def messages_except(*noops: int):  # type: ignore[no-untyped-def]
    return lambda seq: seq not in noops


def test_adopt_orphans_makes_lost_deliveries_deliverable_now_and_finishes_noops() -> None:
    # Sequences 0..7 were handed out; 2 is done, 3 pending; 0, 1, 4, 5, 6 were lost;
    # 1 and 5 are no-ops; 7 is done.
    held = Pending("c1", 1, 0, 50.0, 30.0)
    g = GroupState(floor=0, next=8, done={2, 7}, pending={3: held})
    adopted = g.adopt_orphans(12.5, messages_except(1, 5))
    assert adopted == 3  # 0, 4 and 6
    assert g.pending == {
        0: Pending("", 0, 0, 12.5, 0.0),
        3: held,
        4: Pending("", 0, 0, 12.5, 0.0),
        6: Pending("", 0, 0, 12.5, 0.0),
    }
    assert (g.floor, g.next, g.done) == (0, 8, {1, 2, 5, 7})


def test_adopt_orphans_moves_the_floor_over_finished_noops() -> None:
    g = GroupState(floor=10, next=14, done={11}, pending={})
    assert g.adopt_orphans(0.0, lambda seq: seq == 13) == 1
    # 10, 11, 12 are finished (10 and 12 no-ops): the floor moves to 13, the first open one
    assert (g.floor, g.done, list(g.pending)) == (13, set(), [13])


def test_adopt_orphans_starts_at_the_floor_and_changes_nothing_when_nothing_is_lost() -> None:
    g = GroupState(floor=5, next=7, done={6}, pending={5: Pending("c", 1, 0, 1.0, 1.0)})
    before = g.copy()
    assert g.adopt_orphans(3.0, lambda seq: True) == 0
    assert g == before


def test_release_makes_the_consumers_messages_due_at_once_and_bumps_their_revision() -> None:
    mine = Pending("c1", 2, 4, 100.0, 30.0)
    theirs = Pending("c2", 1, 0, 100.0, 30.0)
    g = GroupState(floor=3, next=9, done={5}, pending={3: mine, 4: theirs, 6: mine})
    delta = g.release("c1")
    released = Pending("c1", 2, 5, float("-inf"), 0.0)
    assert delta == GroupState(floor=3, next=9, done=set(), pending={3: released, 6: released})
    g.merge(delta)
    assert g.pending == {3: released, 4: theirs, 6: released}
    assert g.release("nobody") == GroupState(floor=3, next=9)


def test_copy_is_equal_and_independent() -> None:
    g = GroupState(floor=1, next=4, done={2}, pending={3: Pending("c", 1, 0, 1.0, 1.0)})
    c = g.copy()
    assert c == g and c is not g
    c.done.add(3)
    c.pending.clear()
    assert g.done == {2} and list(g.pending) == [3]


def test_held_by_counts_only_that_consumers_messages() -> None:
    p1, p2 = Pending("c1", 1, 0, 1.0), Pending("c2", 1, 0, 1.0)
    g = GroupState(floor=0, next=4, pending={0: p1, 1: p2, 2: p1, 3: p1})
    assert (g.held_by("c1"), g.held_by("c2"), g.held_by("c3")) == (3, 1, 0)


def test_mark_done_keeps_the_cursor_and_finishes_exactly_those_sequences() -> None:
    g = GroupState(floor=4, next=10, pending={5: Pending("c", 3, 0, 1.0)})
    assert g.mark_done([5, 7]) == GroupState(floor=4, next=10, done={5, 7})
