"""PartitionTable transitions pinned to exact values (tools/mutation found them loose).

test_sync_partitions.py checks the table's story (start, gain, lose, hand off); these check
each transition's exact bookkeeping: times, limits, counters, backoff sequences, and the
boundaries (``<=`` vs ``<``) where an off-by-one would change when data moves.
"""

from __future__ import annotations

import logging

import pytest

from peer_ring.core import PeerUnavailableError, Ring
from peer_ring.core._sync import HoldState, PartitionTable, PullOutcome
from peer_ring.core._sync._partitions import PartitionNotReadyError

A, B, C, D = (f"10.0.0.{i}:7101" for i in range(1, 5))
P = 64
THREE, FOUR = Ring([A, B, C], P), Ring([A, B, C, D], P)


def table(me: str = A, **kw: float) -> PartitionTable:
    return PartitionTable(me, 3, **kw)  # type: ignore[arg-type]


def synced(ring: Ring = THREE, **kw: float) -> PartitionTable:
    t = table(**kw)
    t.start(ring, 0.0)
    t.mark_all_synced()
    return t


def test_not_ready_error_names_the_node_and_the_partition() -> None:
    err = PartitionNotReadyError(A, 17)
    assert isinstance(err, PeerUnavailableError)
    assert err.peer == A and err.partition == 17
    assert (
        str(err) == f"peer {A} is unavailable: partition 17 is not ready on {A} (still pulling it)"
    )


def test_start_queues_every_replicated_partition_due_at_once() -> None:
    t = table()
    t.start(THREE, 7.0)
    assert t.started and not t.ready
    assert t.initial_total == len(THREE.partitions_of(A, 3)) == len(t.pending)
    assert all(
        (pull.since, pull.next_at, pull.holders, pull.attempts) == (7.0, 7.0, (), 0)
        for pull in t.pending.values()
    )
    assert t.next_due() == 7.0
    assert list(t.pending) == sorted(t.pending)


def test_start_clears_what_was_held_and_a_node_without_partitions_is_ready() -> None:
    t = synced(FOUR)
    lost = t.ring_changed(FOUR, THREE, 1.0).lost | t.ring_changed(THREE, FOUR, 1.0).lost
    assert t.held
    t.start(Ring([B, C, D], P), 2.0)  # A is not in the ring: replicates nothing
    assert t.held == {} and t.pending == {} and t.ready
    assert lost  # the ring changes did lose something


def test_mark_all_synced_counts_every_pending_partition() -> None:
    t = table()
    t.start(THREE, 0.0)
    n = len(t.pending)
    t.mark_all_synced()
    assert t.counters.nothing_to_pull == n and t.pending == {} and t.ready


def test_ring_change_before_start_changes_nothing() -> None:
    t = table()
    change = t.ring_changed(THREE, FOUR, 1.0)
    assert change.gained == frozenset() and change.lost == frozenset()
    assert t.pending == {} and t.held == {} and t.counters.gained == 0 and not t.ready


def test_ring_change_records_times_holders_and_counts_exactly() -> None:
    t = synced(handoff_delay=2.5)
    change = t.ring_changed(THREE, FOUR, 10.0)
    assert change.lost and t.counters.lost == len(change.lost)
    for p in change.lost:
        held = t.held[p]
        assert (held.since, held.next_at, held.lost, held.attempts) == (10.0, 12.5, True, 0)
    assert t.replicated == FOUR.partitions_of(A, 3)
    back = t.ring_changed(FOUR, THREE, 20.0)
    assert back.gained == change.lost and t.counters.gained == len(change.lost)
    for p in back.gained:
        pull = t.pending[p]
        assert (pull.since, pull.next_at) == (20.0, 20.0)
        assert set(pull.holders) == set(FOUR.preference_list(p, 3))
        assert p not in t.held  # reclaimed: merged with what is pulled
    assert t.ready and t.pending  # readiness is the start-up sync: later gains keep it


def test_ready_is_rechecked_when_the_last_pending_partition_is_lost() -> None:
    t = table()
    t.start(THREE, 0.0)
    keep = FOUR.partitions_of(A, 3)
    for p in sorted(keep):
        t.pull_result(p, PullOutcome.SYNCED, 1.0)
    assert not t.ready  # the partitions A loses to D are still pending
    t.ring_changed(THREE, FOUR, 2.0)
    assert t.pending == {} and t.ready


def test_note_stray_holds_only_foreign_partitions_of_a_started_node() -> None:
    t = table(handoff_delay=3.0)
    foreign = min(set(range(P)) - FOUR.partitions_of(A, 3))
    assert not t.note_stray(foreign, 0.0)  # not started
    t.start(FOUR, 0.0)
    assert not t.note_stray(min(FOUR.partitions_of(A, 3)), 1.0)  # replicated
    assert t.note_stray(foreign, 4.0)
    held = t.held[foreign]
    assert (held.since, held.next_at, held.lost, held.attempts) == (4.0, 7.0, False, 0)
    assert t.counters.stray == 1
    assert not t.note_stray(foreign, 5.0)  # already held
    assert t.counters.stray == 1


def test_due_pulls_returns_exactly_limit_due_partitions_due_at_their_time() -> None:
    t = table()
    t.start(THREE, 0.0)
    mine = sorted(t.pending)
    assert t.due_pulls(0.0, 3) == mine[:3]
    assert t.due_pulls(0.0, 1) == mine[:1]
    assert t.due_pulls(0.0, len(mine) + 5) == mine
    t.pull_result(mine[0], PullOutcome.RETRY, 0.0)  # next at 0.5
    assert mine[0] not in t.due_pulls(0.49, 100)
    assert t.due_pulls(0.5, 1) == [mine[0]]


def test_holders_and_pending_for() -> None:
    t = synced()
    t.ring_changed(THREE, FOUR, 0.0)
    change = t.ring_changed(FOUR, THREE, 3.0)
    p = min(change.gained)
    assert t.pending_for(p, 10.0) == 7.0
    assert set(t.holders(p)) == set(FOUR.preference_list(p, 3))
    q = min(THREE.partitions_of(A, 3) - change.gained)
    assert t.holders(q) == () and t.pending_for(q, 10.0) == 0.0


def test_retry_backoff_doubles_from_initial_up_to_max() -> None:
    t = table(retry_initial=0.5, retry_max=5.0)
    t.start(THREE, 0.0)
    p = min(t.pending)
    delays = []
    for _ in range(6):
        t.pull_result(p, PullOutcome.RETRY, 100.0)
        delays.append(t.pending[p].next_at - 100.0)
    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert t.pending[p].attempts == 6 and t.counters.retries == 6


def test_retry_with_the_current_or_unknown_epoch_backs_off_a_stale_epoch_retries_at_once() -> None:
    t = table(retry_initial=1.0)
    t.start(THREE, 0.0)
    p, q, r = sorted(t.pending)[:3]
    t.pull_result(p, PullOutcome.RETRY, 5.0, t.epoch)
    t.pull_result(q, PullOutcome.RETRY, 5.0, None)
    t.pull_result(r, PullOutcome.RETRY, 5.0, t.epoch - 1)
    assert (t.pending[p].next_at, t.pending[q].next_at, t.pending[r].next_at) == (6.0, 6.0, 5.0)


def test_retry_now_bumps_the_epoch_and_never_delays_an_earlier_attempt() -> None:
    t = table(retry_initial=4.0)
    t.start(THREE, 0.0)
    p, q = sorted(t.pending)[:2]
    t.pull_result(p, PullOutcome.RETRY, 0.0)  # due at 4.0; q is due at 0.0
    t.retry_now(2.0)
    assert t.epoch == 1
    assert (t.pending[p].next_at, t.pending[q].next_at) == (2.0, 0.0)
    t.retry_now(3.0)
    assert t.epoch == 2


@pytest.mark.parametrize(
    ("outcome", "counter"),
    [
        (PullOutcome.SYNCED, "synced"),
        (PullOutcome.NOTHING, "nothing_to_pull"),
        (PullOutcome.GAVE_UP, "given_up"),
    ],
)
def test_each_final_outcome_is_counted_once_in_its_own_counter(
    outcome: PullOutcome, counter: str
) -> None:
    t = table()
    t.start(THREE, 0.0)
    p = min(t.pending)
    t.pull_result(p, outcome, 1.0)
    assert p not in t.pending
    counts = {k: getattr(t.counters, k) for k in ("synced", "nothing_to_pull", "given_up")}
    assert counts == {k: int(k == counter) for k in counts}
    t.pull_result(p, outcome, 2.0)  # no longer pending: ignored
    t.pull_result(p, PullOutcome.RETRY, 2.0)
    assert getattr(t.counters, counter) == 1 and t.counters.retries == 0


def test_due_handoffs_returns_exactly_limit_due_partitions() -> None:
    t = synced(handoff_delay=1.0)
    t.ring_changed(THREE, FOUR, 0.0)
    lost = list(t.held)  # in the order they were queued
    assert len(lost) >= 3
    assert t.due_handoffs(0.99, 100) == []
    assert t.due_handoffs(1.0, 2) == lost[:2]
    assert t.due_handoffs(1.0, 1) == lost[:1]
    assert t.due_handoffs(1.0, 100) == lost


def test_a_confirmed_handoff_is_counted_once_as_handed_off_and_dropped() -> None:
    t = synced()
    p = min(t.ring_changed(THREE, FOUR, 0.0).lost)
    assert not t.handoff_result(999, True, 1.0)  # not held: nothing to drop
    assert (t.counters.handed_off, t.counters.dropped) == (0, 0)
    assert t.handoff_result(p, True, 1.0)
    assert (t.counters.handed_off, t.counters.dropped, t.counters.dropped_unconfirmed) == (1, 1, 0)
    assert p not in t.held


def test_unconfirmed_handoffs_back_off_then_drop_at_exactly_the_retention(
    caplog: pytest.LogCaptureFixture,
) -> None:
    t = synced(handoff_delay=0.0, handoff_retention=600.0, retry_initial=0.5, retry_max=5.0)
    t.ring_changed(THREE, FOUR, 1000.0)
    p = min(t.held)
    delays = []
    for _ in range(7):
        assert not t.handoff_result(p, False, 1001.0)
        delays.append(t.held[p].next_at - 1001.0)
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 20.0, 20.0]  # capped at 4 * retry_max
    assert t.held[p].attempts == 7
    assert not t.handoff_result(p, False, 1599.5)
    with caplog.at_level(logging.WARNING, logger="peer_ring.core._sync._partitions"):
        assert t.handoff_result(p, False, 1600.0)
    assert p not in t.held
    assert (t.counters.dropped, t.counters.dropped_unconfirmed, t.counters.handed_off) == (1, 1, 0)
    assert [r.getMessage() for r in caplog.records] == [
        f"partition {p}: handoff not confirmed after 600s; dropping it anyway"
    ]


def test_drop_empty_forgets_a_held_partition_once() -> None:
    t = synced()
    p = min(t.ring_changed(THREE, FOUR, 0.0).lost)
    t.drop_empty(p)
    assert p not in t.held and t.counters.dropped == 1
    t.drop_empty(p)
    assert t.counters.dropped == 1


def test_state_of_each_kind_of_partition() -> None:
    t = table()
    t.start(FOUR, 0.0)
    pending = min(t.pending)
    assert t.state(pending) is HoldState.PENDING
    t.pull_result(pending, PullOutcome.SYNCED, 1.0)
    assert t.state(pending) is HoldState.COMPLETE
    foreign = min(set(range(P)) - FOUR.partitions_of(A, 3))
    assert t.state(foreign) is HoldState.NONE
    t.note_stray(foreign, 1.0)
    assert t.state(foreign) is HoldState.PENDING


def test_next_due_is_the_earliest_pull_or_handoff() -> None:
    t = synced(handoff_delay=3.0)
    assert t.next_due() is None
    t.ring_changed(THREE, FOUR, 10.0)
    assert t.next_due() == 13.0
    gained = t.ring_changed(FOUR, THREE, 11.0).gained
    assert gained and t.next_due() == 11.0


def test_counters_accumulate_over_many_events() -> None:
    # Every counter is a running total: a second event adds to the first, never resets it.
    t = synced(FOUR, handoff_delay=0.0, handoff_retention=10.0)
    first = t.counters.nothing_to_pull
    gained = t.ring_changed(FOUR, THREE, 0.0).gained
    t.mark_all_synced()
    assert t.counters.nothing_to_pull == first + len(gained)
    lost = t.ring_changed(THREE, FOUR, 1.0).lost
    assert t.counters.gained == len(gained) and t.counters.lost == len(lost)
    t.ring_changed(FOUR, THREE, 2.0)
    t.ring_changed(THREE, FOUR, 3.0)
    assert t.counters.gained == 2 * len(gained) and t.counters.lost == 2 * len(lost)
    a, b, c, d = sorted(t.held)[:4]
    assert t.handoff_result(a, True, 4.0) and t.handoff_result(b, True, 4.0)
    assert (t.counters.handed_off, t.counters.dropped) == (2, 2)
    assert t.handoff_result(c, False, 20.0) and t.handoff_result(d, False, 20.0)
    assert (t.counters.dropped_unconfirmed, t.counters.dropped) == (2, 4)
    e, f = sorted(t.held)[:2]
    t.drop_empty(e)
    t.drop_empty(f)
    assert t.counters.dropped == 6
    foreign = sorted(set(range(P)) - FOUR.partitions_of(A, 3) - set(t.held))[:2]
    assert all(t.note_stray(p, 5.0) for p in foreign) and t.counters.stray == 2


def test_nothing_and_gave_up_outcomes_accumulate() -> None:
    t = table()
    t.start(THREE, 0.0)
    p, q, r, s = sorted(t.pending)[:4]
    t.pull_result(p, PullOutcome.NOTHING, 1.0)
    t.pull_result(q, PullOutcome.NOTHING, 1.0)
    t.pull_result(r, PullOutcome.GAVE_UP, 1.0)
    t.pull_result(s, PullOutcome.GAVE_UP, 1.0)
    assert (t.counters.nothing_to_pull, t.counters.given_up) == (2, 2)


def test_a_restarted_table_is_not_ready_as_a_bool() -> None:
    t = synced()
    assert t.ready is True
    t.start(THREE, 1.0)
    assert t.ready is False
