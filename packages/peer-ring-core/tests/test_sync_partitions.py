"""The pure data-movement bookkeeping: partition table, pull decisions, digests, wire."""

from __future__ import annotations

import pytest

from peer_ring.core import DIGEST_BUCKETS, Ring
from peer_ring.core._sync import (
    HoldState,
    PartitionTable,
    PullOutcome,
    RemotePartition,
    buckets_to_pull,
    decide_pull,
    differing_buckets,
    gains_after_leave,
    is_empty,
    partition_root,
)
from peer_ring.core._sync._wire import (
    decode_digest_request,
    decode_digest_response,
    decode_partitions,
    decode_ping,
    encode_digest_request,
    encode_digest_response,
    encode_partitions,
    encode_ping,
)

A, B, C, D = (f"10.0.0.{i}:7101" for i in range(1, 5))
P = 64


def table(me: str = A, **kw: float) -> PartitionTable:
    return PartitionTable(me, 3, **kw)  # type: ignore[arg-type]


# -- decide_pull -------------------------------------------------------------------------


def test_decide_pull_synced_once_a_complete_copy_was_merged() -> None:
    answers = {B: HoldState.COMPLETE}
    assert decide_pull([B, C], answers, True, 0.0, 60.0) is PullOutcome.SYNCED


def test_decide_pull_cold_start_when_everyone_answered_without_a_copy() -> None:
    answers = {B: HoldState.PENDING, C: HoldState.NONE}
    assert decide_pull([B, C], answers, False, 0.0, 60.0) is PullOutcome.NOTHING
    assert decide_pull([], {}, False, 0.0, 60.0) is PullOutcome.NOTHING  # alone


def test_decide_pull_waits_for_a_silent_candidate_then_gives_up() -> None:
    answers = {B: HoldState.PENDING}
    assert decide_pull([B, C], answers, False, 1.0, 60.0) is PullOutcome.RETRY
    assert decide_pull([B, C], answers, False, 60.0, 60.0) is PullOutcome.GAVE_UP


def test_decide_pull_complete_holder_whose_transfer_failed_is_retried() -> None:
    # B has the data but the transfer broke: never conclude "nothing to pull".
    answers = {B: HoldState.COMPLETE, C: HoldState.PENDING}
    assert decide_pull([B, C], answers, False, 1.0, 60.0) is PullOutcome.RETRY


# -- PartitionTable ----------------------------------------------------------------------


def test_start_marks_every_replicated_partition_pending_until_pulled() -> None:
    ring = Ring([A, B, C, D], P)
    t = table()
    t.start(ring, 0.0)
    mine = ring.partitions_of(A, 3)
    assert set(t.pending) == mine
    assert not t.ready
    assert all(t.state(p) is HoldState.PENDING for p in mine)
    for p in mine:
        t.pull_result(p, PullOutcome.SYNCED, 1.0)
    assert t.ready
    assert all(t.state(p) is HoldState.COMPLETE for p in mine)
    assert t.counters.synced == len(mine)


def test_ready_with_nothing_to_pull() -> None:
    t = table()
    t.start(Ring([A], P), 0.0)
    t.mark_all_synced()
    assert t.ready


def test_ring_change_gains_pending_with_previous_holders_and_holds_losses() -> None:
    old, new = Ring([A, B, C], P), Ring([A, B, C, D], P)
    t = table(D)
    t.start(Ring([D], P), 0.0)
    t.mark_all_synced()
    t.replicated = old.partitions_of(D, 3)  # D replicated nothing in the 3-node ring
    change = t.ring_changed(old, new, 5.0)
    assert change.gained == new.partitions_of(D, 3)
    p = min(change.gained)
    assert set(t.holders(p)) == set(old.preference_list(p, 3))
    assert t.state(p) is HoldState.PENDING

    ta = table(A, handoff_delay=2.0)
    ta.start(old, 0.0)
    ta.mark_all_synced()
    change = ta.ring_changed(old, new, 5.0)
    assert change.lost == old.partitions_of(A, 3) - new.partitions_of(A, 3)
    lost = min(change.lost)
    assert ta.state(lost) is HoldState.COMPLETE  # still served until handed off
    assert ta.due_handoffs(6.0, 100) == []
    assert lost in ta.due_handoffs(7.0, 100)


def test_regaining_a_held_partition_pulls_it_again() -> None:
    three, four = Ring([A, B, C], P), Ring([A, B, C, D], P)
    t = table()
    t.start(three, 0.0)
    t.mark_all_synced()
    change = t.ring_changed(three, four, 1.0)
    p = min(change.lost)
    t.ring_changed(four, three, 2.0)
    assert p not in t.held
    assert t.state(p) is HoldState.PENDING


def test_handoff_confirmed_drops_unconfirmed_retries_then_retention_drops() -> None:
    three, four = Ring([A, B, C], P), Ring([A, B, C, D], P)
    t = table(handoff_delay=0.0, handoff_retention=100.0, retry_initial=1.0, retry_max=1.0)
    t.start(three, 0.0)
    t.mark_all_synced()
    p, q = sorted(t.ring_changed(three, four, 0.0).lost)[:2]
    assert t.handoff_result(p, True, 1.0)
    assert p not in t.held and t.counters.handed_off == 1
    assert not t.handoff_result(q, False, 1.0)
    assert q in t.held and q not in t.due_handoffs(1.5, 100)
    assert t.handoff_result(q, False, 101.0)
    assert t.counters.dropped_unconfirmed == 1


def test_stray_data_is_held_as_partial_and_handed_off() -> None:
    ring = Ring([A, B, C, D], P)
    t = table(handoff_delay=1.0)
    t.start(ring, 0.0)
    foreign = min(set(range(P)) - ring.partitions_of(A, 3))
    assert t.state(foreign) is HoldState.NONE
    assert t.note_stray(foreign, 0.0)
    assert not t.note_stray(foreign, 0.0)
    assert t.state(foreign) is HoldState.PENDING  # partial: merged, never "complete"
    assert foreign in t.due_handoffs(1.0, 100)


def test_retry_backoff_and_retry_now_epoch() -> None:
    ring = Ring([A, B, C], P)
    t = table(retry_initial=0.5, retry_max=2.0)
    t.start(ring, 0.0)
    p = min(t.pending)
    epoch = t.epoch
    t.pull_result(p, PullOutcome.RETRY, 0.0, epoch)
    assert p not in t.due_pulls(0.4, 100) and p in t.due_pulls(0.5, 100)
    for _ in range(5):
        t.pull_result(p, PullOutcome.RETRY, 0.0, t.epoch)
    assert p not in t.due_pulls(1.9, 100) and p in t.due_pulls(2.0, 100)  # capped
    # a peer came back while an attempt was running: its failure retries at once
    epoch = t.epoch
    t.retry_now(0.0)
    t.pull_result(p, PullOutcome.RETRY, 0.0, epoch)
    assert p in t.due_pulls(0.0, 100)


def test_pending_partition_lost_before_it_was_pulled_is_handed_off() -> None:
    three, four = Ring([A, B, C], P), Ring([A, B, C, D], P)
    t = table()
    t.start(three, 0.0)
    change = t.ring_changed(three, four, 1.0)
    p = min(change.lost)
    assert p not in t.pending and p in t.held
    assert t.state(p) is HoldState.COMPLETE  # handed off like a complete copy
    # What is still replicated is still pending and decides readiness on its own.
    assert set(t.pending) == four.partitions_of(A, 3)
    assert not t.ready
    for q in sorted(t.pending):
        t.pull_result(q, PullOutcome.SYNCED, 2.0)
    assert t.ready and not t.pending


def test_gains_after_leave_counts_each_peer() -> None:
    ring = Ring([A, B, C, D], P)
    gains = gains_after_leave(ring, D, 3)
    assert sum(gains.values()) == len(ring.partitions_of(D, 3))
    assert D not in gains


# -- digests -----------------------------------------------------------------------------


def buckets(**filled: bytes) -> list[bytes]:
    out = [b""] * DIGEST_BUCKETS
    for name, value in filled.items():
        out[int(name[1:])] = value
    return out


def test_partition_root_is_zero_when_empty_and_order_independent() -> None:
    assert partition_root({}) == 0
    assert partition_root({"kv": buckets()}) == 0
    x = {"kv": buckets(b3=b"abc"), "rl": buckets(b1=b"z")}
    y = {"rl": buckets(b1=b"z"), "kv": buckets(b3=b"abc")}
    assert partition_root(x) == partition_root(y) != 0
    assert partition_root({"kv": buckets(b3=b"abd")}) != partition_root({"kv": buckets(b3=b"abc")})


def test_differing_and_pullable_buckets() -> None:
    local = buckets(b1=b"x", b2=b"same")
    remote = buckets(b2=b"same", b5=b"y")
    assert differing_buckets(local, remote) == [1, 5]
    assert buckets_to_pull(local, remote) == [5]  # b1 is empty remotely: nothing to get
    assert is_empty({"kv": buckets()}) and not is_empty({"kv": local})


def test_wire_round_trips() -> None:
    assert decode_ping(encode_ping(123, 1)) == (123, 1)
    assert decode_partitions(encode_partitions([3, 1, 2])) == [3, 1, 2]
    roots = [(1, 0), (7, 2**64 - 1)]
    assert decode_digest_request(encode_digest_request(roots)) == roots
    entries = [
        RemotePartition(1, HoldState.NONE, False, {}),
        RemotePartition(2, HoldState.COMPLETE, True, {}),
        RemotePartition(3, HoldState.PENDING, False, {"kv": buckets(b0=b"a" * 12)}),
    ]
    assert decode_digest_response(encode_digest_response(entries)) == entries
    with pytest.raises(ValueError):
        decode_digest_response(encode_digest_response(entries)[:-3])
