"""Consumer group claims, acks and deadline changes pinned to the exact delta they produce
(tools/mutation found them loose; test_mut_group.py covers adoption, release and copies).

A delta is what the sequencer replicates before a consumer sees the effect: a lagging
replica learns the cursor from it, so its ``floor``/``next`` matter, not only the state the
sequencer reaches after merging it.
"""

from __future__ import annotations

import pytest

from peer_ring.pubsub._errors import NotHeldError, StaleAckError
from peer_ring.pubsub._group import GroupState, Pending


def every(seq: int) -> bool:
    return True


# ---------------------------------------------------------------------------------- claim
def test_a_first_claim_hands_out_fresh_messages_up_to_the_limit() -> None:
    g = GroupState()
    claim = g.claim("c", 2, every, first=0, end=10, now=5.0, ack_wait=30.0, max_deliver=3)
    assert claim.deliver == [(0, 1), (1, 1)]
    assert (claim.dead, claim.expired) == ([], 0)
    fresh = Pending("c", 1, 0, 35.0, 30.0)
    assert claim.delta == GroupState(floor=0, next=2, done=set(), pending={0: fresh, 1: fresh})


def test_a_claim_below_the_retained_log_moves_the_cursor_and_counts_expired() -> None:
    g = GroupState(floor=2, next=4)
    claim = g.claim("c", 1, every, first=10, end=12, now=0.0, ack_wait=1.0, max_deliver=3)
    assert claim.expired == 6  # 4..9 were never delivered and are gone
    assert claim.deliver == [(10, 1)]
    assert (claim.delta.floor, claim.delta.next) == (10, 11)  # type: ignore[union-attr]
    g.merge(claim.delta)  # type: ignore[arg-type]
    assert (g.floor, g.next, list(g.pending)) == (10, 11, [10])


def test_expired_messages_are_redelivered_first_with_a_new_delivery() -> None:
    g = GroupState(
        floor=0,
        next=5,
        pending={
            1: Pending("old", 1, 4, 9.0, 9.0),
            3: Pending("old", 2, 0, 8.0, 8.0),
            4: Pending("old", 1, 0, 99.0, 30.0),  # not yet due
        },
        done={0, 2},
    )
    claim = g.claim("new", 10, every, first=0, end=6, now=10.0, ack_wait=5.0, max_deliver=5)
    assert claim.deliver == [(1, 2), (3, 3), (5, 1)]
    assert claim.delta.pending == {  # type: ignore[union-attr]
        1: Pending("new", 2, 0, 15.0, 5.0),  # revision restarts, the wait is ack_wait
        3: Pending("new", 3, 0, 15.0, 5.0),
        5: Pending("new", 1, 0, 15.0, 5.0),
    }
    assert claim.expired == 0


def test_the_limit_bounds_redeliveries_too() -> None:
    g = GroupState(floor=0, next=3, pending={s: Pending("x", 1, 0, 0.0, 1.0) for s in range(3)})
    claim = g.claim("c", 1, every, first=0, end=3, now=1.0, ack_wait=1.0, max_deliver=9)
    assert claim.deliver == [(0, 2)]
    claim = g.claim("c", 2, every, first=0, end=9, now=1.0, ack_wait=1.0, max_deliver=9)
    assert claim.deliver == [(0, 2), (1, 2)]


def test_a_dead_message_does_not_stop_the_redelivery_of_the_next() -> None:
    g = GroupState(
        floor=0,
        next=2,
        pending={0: Pending("x", 3, 0, 0.0, 1.0), 1: Pending("x", 1, 0, 0.0, 1.0)},
    )
    claim = g.claim("c", 5, every, first=0, end=2, now=1.0, ack_wait=1.0, max_deliver=3)
    assert claim.dead == [0]
    assert claim.deliver == [(1, 2)]


# ------------------------------------------------------------------------ check_held & co.
def test_check_held_explains_each_refusal() -> None:
    g = GroupState(floor=1, next=5, done={3}, pending={2: Pending("a", 2, 0, 9.0)})
    assert g.check_held("a", 0, 1) is None  # below the floor: done
    assert g.check_held("a", 3, 1) is None  # done out of order
    assert g.check_held("a", 2, 2) == Pending("a", 2, 0, 9.0)
    with pytest.raises(NotHeldError) as not_held:
        g.check_held("a", 4, 1)
    assert str(not_held.value) == "message 4 is not held by any consumer of this group"
    with pytest.raises(StaleAckError) as stale:
        g.check_held("a", 2, 1)
    assert str(stale.value) == (
        "message 2 was redelivered (delivery 2, this is delivery 1); its ack_wait had expired"
    )
    with pytest.raises(NotHeldError) as other:
        g.check_held("b", 2, 2)
    assert str(other.value) == "message 2 is held by another consumer"


def test_finish_returns_the_delta_with_the_cursor() -> None:
    g = GroupState(floor=5, next=9, pending={s: Pending("c", 1, 0, 9.0) for s in (5, 6, 8)})
    delta = g.finish("c", [(5, 1), (8, 1)])
    # 5 done at the floor: the delta's floor moves to 6; 8 done out of order.
    assert delta == GroupState(floor=6, next=9, done={8}, pending={})
    lagging = GroupState(floor=2, next=4)  # a replica that missed earlier deltas
    lagging.merge(delta)
    assert (lagging.floor, lagging.next, lagging.done) == (6, 9, {8})


def test_extend_bumps_the_revision_and_sets_the_new_wait() -> None:
    g = GroupState(floor=1, next=7, pending={4: Pending("c", 2, 3, 10.0, 10.0)})
    delta = g.extend("c", 4, 2, now=20.0, wait=2.5)
    assert delta == GroupState(floor=1, next=7, pending={4: Pending("c", 2, 4, 22.5, 2.5)})
    g.merge(delta)
    assert g.pending[4] == Pending("c", 2, 4, 22.5, 2.5)
    # A message already done: an empty delta with the cursor.
    assert g.extend("c", 0, 1, now=0.0, wait=1.0) == GroupState(floor=1, next=7)


def test_restart_deadlines_counts_each_wait_from_now() -> None:
    g = GroupState(
        next=3, pending={0: Pending("a", 1, 0, 1e9, 5.0), 2: Pending("b", 2, 1, -4.0, 0.5)}
    )
    g.restart_deadlines(100.0)
    assert g.pending == {0: Pending("a", 1, 0, 105.0, 5.0), 2: Pending("b", 2, 1, 100.5, 0.5)}


def test_merge_keeps_the_later_delivery_of_a_pending_message() -> None:
    newer = Pending("b", 3, 0, 5.0, 1.0)
    older = Pending("a", 2, 7, 50.0, 1.0)
    g = GroupState(next=2, pending={1: newer})
    g.merge(GroupState(next=2, pending={1: older}))
    assert g.pending == {1: newer}  # a later delivery wins over a higher revision
    g.merge(GroupState(next=2, pending={1: Pending("b", 3, 1, 6.0, 1.0)}))
    assert g.pending == {1: Pending("b", 3, 1, 6.0, 1.0)}  # same delivery, later revision
