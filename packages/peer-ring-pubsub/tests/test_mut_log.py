"""The partition log's queries and retention pinned to exact results (tools/mutation found
them loose).

test_log_properties.py checks the replication story (acknowledged appends survive, merges
commute); these pin what each query and retention step returns at its boundaries: replay by
time (``seek_time``, ``last_time``), range reads, the dedup lookup after a takeover, and
retention by count, bytes, age and the dedup window.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer_ring.pubsub._config import TopicConfig
from peer_ring.pubsub._errors import OffsetOutOfRangeError
from peer_ring.pubsub._log import NOOP, DedupRecord, Entry, PartitionLog

BIG = TopicConfig(max_messages=10**6, max_bytes=10**9)


def log_with(seqs_times: dict[int, float], first: int = 0, config: TopicConfig = BIG):  # type: ignore[no-untyped-def]
    log = PartitionLog(config)
    log.first = first
    for seq, t in sorted(seqs_times.items()):
        assert log.add(Entry(1, seq, t, "", b"", b"x"))
    return log


# ------------------------------------------------------------------------------ seek_time
def expected_seek(log: PartitionLog, when: float, upto: int) -> int:
    """One past the last held entry (up to ``upto``) older than ``when``; ``first`` if none."""
    older = [s for s, e in log.entries.items() if s <= upto and e.time < when]
    return max(older) + 1 if older else log.first


@settings(max_examples=300, deadline=None)
@given(
    gaps=st.lists(st.integers(1, 3), min_size=0, max_size=30),
    steps=st.lists(st.sampled_from([0.0, 1.0, 2.5]), min_size=30, max_size=30),
    when=st.sampled_from([-1.0, 0.0, 1.0, 2.5, 5.0, 10.0, 30.0, 99.0]),
    first=st.integers(0, 3),
    cut=st.integers(-2, 40),
)
def test_seek_time_is_one_past_the_last_older_entry(
    gaps: list[int], steps: list[float], when: float, first: int, cut: int
) -> None:
    seqs, seq, t = {}, first, 0.0
    for gap, step in zip(gaps, steps, strict=False):
        seqs[seq] = t
        seq += gap
        t += step
    log = log_with(seqs, first)
    upto = first + cut
    got = log.seek_time(when, upto)
    assert got == min(expected_seek(log, when, upto), upto + 1)


def test_seek_time_exact_answers() -> None:
    log = log_with({0: 0.0, 1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0})
    assert log.seek_time(2.5, 4) == 3
    assert log.seek_time(2.0, 4) == 2  # at-or-after: an equal time is found
    assert log.seek_time(4.0, 4) == 4  # the last entry itself
    assert log.seek_time(4.5, 4) == 5  # nothing yet: upto + 1
    assert log.seek_time(-5.0, 4) == 0  # everything is after: the first sequence
    assert log.seek_time(3.5, 2) == 3  # bounded by upto: upto + 1
    assert log.seek_time(3.5, 10) == 4  # upto past the end is clamped to the log


def test_seek_time_over_gaps_answers_the_gap_start() -> None:
    log = log_with({5: 1.0, 6: 2.0, 10: 7.0, 11: 8.0}, first=5)
    assert log.seek_time(3.0, 11) == 7  # 7..9 are a gap: reading from 7 finds 10 first
    assert log.seek_time(2.0, 11) == 6
    assert log.seek_time(0.5, 11) == 5
    assert log.seek_time(9.0, 11) == 12
    assert log.seek_time(9.0, 8) == 7  # upto inside the gap


def test_seek_time_in_an_empty_log_is_first() -> None:
    log = PartitionLog(BIG)
    log.first = 4
    assert log.seek_time(1.0, 10) == 4
    assert log.seek_time(1.0, 3) == 4


def test_seek_time_refuses_times_retention_dropped_including_the_boundary() -> None:
    log = log_with({0: 10.0, 1: 20.0, 2: 30.0}, config=TopicConfig(max_messages=2))
    assert log.apply_retention(0.0) == 1
    assert (log.first, log.dropped_time) == (1, 10.0)
    with pytest.raises(OffsetOutOfRangeError) as err:
        log.seek_time(10.0, 2)  # exactly the dropped entry's time
    assert (err.value.requested, err.value.first) == (0, 1)
    assert "time 10.0" in str(err.value) and "first retained: 1" in str(err.value)
    assert log.seek_time(10.5, 2) == 1


def test_last_time_is_the_highest_entrys_time() -> None:
    log = PartitionLog(BIG)
    assert log.last_time() == -math.inf
    log.add(Entry(1, 3, 7.0, "", b"", b"x"))
    log.add(Entry(1, 1, 9.0, "", b"", b"x"))  # a lower sequence: not the highest
    assert log.last_time() == 7.0
    log._remove(3)
    assert log.last_time() == 9.0
    log._remove(1)
    assert log.last_time() == -math.inf


# ----------------------------------------------------------------------------------- read
def test_read_is_inclusive_bounded_and_skips_gaps() -> None:
    log = log_with({2: 0.0, 3: 0.0, 5: 0.0, 6: 0.0, 7: 0.0}, first=2)
    assert [e.seq for e in log.read(2, 6, 100)] == [2, 3, 5, 6]
    assert [e.seq for e in log.read(3, 7, 2)] == [3, 5]  # limit counts entries, not seqs
    assert [e.seq for e in log.read(4, 4, 10)] == []
    assert [e.seq for e in log.read(7, 7, 1)] == [7]
    assert log.read(2, 7, 0) == []


def test_read_below_first_raises_with_the_offsets() -> None:
    log = log_with({4: 0.0}, first=4)
    with pytest.raises(OffsetOutOfRangeError) as err:
        log.read(3, 10, 10)
    assert (err.value.requested, err.value.first) == (3, 4)
    assert str(err.value) == "sequence 3 is below retention (first retained: 4)"


# --------------------------------------------------------------------------------- lookup
def test_lookup_forgets_a_msg_id_a_later_epoch_superseded() -> None:
    log = PartitionLog(BIG)
    log.add(Entry(1, 0, 0.0, "a", b"", b"x"))
    log.add(Entry(1, 1, 0.0, "b", b"", b"x"))
    log.add(Entry(2, 2, 0.0, "c", b"", b"x", writer=3))
    assert log.lookup("a") is not None and log.lookup("zz") is None
    # Epoch 2 starts at 1: epoch 1's entry at 1 was never acknowledged. The record is
    # dropped from the table by start_epoch; put it back to check lookup's own check.
    record_b = log.dedup["b"]
    log.start_epoch(2, 1)
    assert "b" not in log.dedup
    log.dedup["b"] = record_b
    assert log.lookup("b") is None
    assert log.lookup("a") is not None
    # Re-stamped by a writer of epoch 3: an epoch-3 start above it does not supersede it,
    # the writer (3) counts, not the entry's epoch (2).
    log.start_epoch(3, 2)
    record_c = log.lookup("c")
    assert record_c is not None and (record_c.epoch, record_c.seq, record_c.writer) == (2, 2, 3)


# ------------------------------------------------------------------------------ retention
def test_retention_by_count_keeps_exactly_max_messages() -> None:
    log = log_with({i: float(i) for i in range(5)}, config=TopicConfig(max_messages=3))
    assert log.apply_retention(0.0) == 2
    assert (sorted(log.entries), log.first, log.dropped_time) == ([2, 3, 4], 2, 1.0)
    assert log.apply_retention(0.0) == 0  # at the limit: nothing more


def test_retention_by_bytes_keeps_up_to_max_bytes() -> None:
    log = PartitionLog(TopicConfig(max_bytes=10))
    for i in range(4):
        log.add(Entry(1, i, float(i), "", b"", b"12345"))  # 5 bytes each
    assert log.bytes == 20
    assert log.apply_retention(0.0) == 2
    assert (log.bytes, sorted(log.entries), log.first) == (10, [2, 3], 2)


def test_retention_by_age_drops_strictly_older_entries() -> None:
    log = log_with({0: 10.0, 1: 20.0, 2: 30.0}, config=TopicConfig(max_age=15.0))
    assert log.apply_retention(35.0) == 1  # 35 - 15 = 20: the entry at 20 stays
    assert (sorted(log.entries), log.first, log.dropped_time) == ([1, 2], 1, 10.0)
    assert log.apply_retention(35.5) == 1
    assert (sorted(log.entries), log.first, log.dropped_time) == ([2], 2, 20.0)


def test_retention_without_an_age_limit_keeps_old_entries() -> None:
    log = log_with({0: -1e9, 1: 0.0})
    assert log.apply_retention(1e12) == 0
    assert sorted(log.entries) == [0, 1]


def test_retention_finds_the_lowest_entry_far_past_first() -> None:
    # Entries far above ``first`` (after a merge of a replica that retained more): the
    # short scan from ``first`` misses them and the lowest is found by min.
    log = log_with({100: 1.0, 101: 2.0, 300: 3.0}, config=TopicConfig(max_messages=1))
    assert log.apply_retention(0.0) == 2
    assert (sorted(log.entries), log.first) == ([300], 102)


def test_retention_drops_the_lowest_entry_near_first() -> None:
    log = log_with({1: 1.0, 2: 2.0, 3: 3.0}, config=TopicConfig(max_messages=2))
    assert log.apply_retention(0.0) == 1
    assert (sorted(log.entries), log.first) == ([2, 3], 2)


def test_retention_never_moves_first_backwards() -> None:
    log = log_with({3: 1.0, 4: 2.0}, config=TopicConfig(max_messages=1))
    log.first = 2  # merged from a replica whose first is lower than its lowest entry
    assert log.apply_retention(0.0) == 1
    assert log.first == 4
    log.advance_first(10)
    assert log.apply_retention(0.0) == 0 and log.first == 10


def test_retention_expires_dedup_records_up_to_the_first_in_window() -> None:
    log = PartitionLog(TopicConfig(dedup_window=10.0))
    for i, (msg_id, t) in enumerate([("a", 1.0), ("b", 5.0), ("c", 20.0), ("d", 2.0)]):
        log.add(Entry(1, i, t, msg_id, b"", b"x"))
    # now 15: the horizon is 5; "a" (1) expires, "b" (exactly 5) stays, and the scan stops
    # at the first record in the window: "d" (merged out of order) outlives its window.
    log.apply_retention(15.0)
    assert list(log.dedup) == ["b", "c", "d"]
    log.apply_retention(15.5)
    assert list(log.dedup) == ["c", "d"]


# ------------------------------------------------------------------- appends, dedup, epochs
def test_add_stores_once_and_records_the_exact_dedup_position() -> None:
    log = PartitionLog(BIG)
    entry = Entry(2, 7, 12.5, "m1", b"k", b"data", writer=3)
    assert log.add(entry) is True
    assert log.add(Entry(2, 7, 99.0, "m1", b"k", b"other", writer=3)) is False  # same writer
    assert log.add(Entry(1, 7, 99.0, "m9", b"", b"lower", writer=1)) is False
    assert log.get(7) == entry and log.bytes == entry.size
    assert log.dedup == {"m1": DedupRecord("m1", 2, 7, 12.5, 3)}
    # A higher writer replaces the entry (and its bytes).
    newer = Entry(2, 7, 13.0, "m1", b"k", b"da", writer=4)
    assert log.add(newer) is True
    assert log.get(7) == newer and log.bytes == newer.size


def test_no_dedup_record_without_a_msg_id_or_for_a_noop() -> None:
    log = PartitionLog(BIG)
    log.add(Entry(1, 0, 0.0, "", b"", b"x"))
    log.add(Entry(1, 1, 0.0, "n1", b"", b"", kind=NOOP))
    assert log.dedup == {}


def test_the_earliest_valid_position_of_a_msg_id_wins_in_any_order() -> None:
    late, early = DedupRecord("m", 1, 5, 1.0), DedupRecord("m", 1, 3, 2.0)
    for order in ([late, early], [early, late]):
        log = PartitionLog(BIG)
        for record in order:
            log.add_dedup(record)
        assert log.dedup == {"m": early}
    # Same position: the higher writer wins, whatever the order.
    low, high = DedupRecord("m", 1, 3, 2.0, 1), DedupRecord("m", 1, 3, 2.0, 4)
    for order in ([low, high], [high, low]):
        log = PartitionLog(BIG)
        for record in order:
            log.add_dedup(record)
        assert log.dedup["m"] == high
    # The same position and writer again: the first one is kept (its time too).
    log = PartitionLog(BIG)
    first, again = DedupRecord("m", 1, 3, 2.0, 4), DedupRecord("m", 1, 3, 9.0, 4)
    log.add_dedup(first)
    log.add_dedup(again)
    assert log.dedup["m"] == first


def test_an_epoch_start_only_moves_down() -> None:
    log = PartitionLog(BIG)
    log.start_epoch(2, 5)
    log.start_epoch(2, 8)  # a later, higher start for the same epoch is ignored
    assert log.epoch_starts == {2: 5}
    log.start_epoch(2, 3)
    assert log.epoch_starts == {2: 3}


def test_advance_first_drops_only_what_is_below_it() -> None:
    log = log_with({2: 0.0, 3: 0.0, 4: 0.0}, first=2)
    log.advance_first(3)
    assert (sorted(log.entries), log.first) == ([3, 4], 3)
    log.advance_first(1)  # never backwards
    assert (sorted(log.entries), log.first) == ([3, 4], 3)


def test_the_highest_sequence_restarts_after_the_log_emptied() -> None:
    log = PartitionLog(BIG)
    log.add(Entry(1, 0, 1.0, "", b"", b"x"))
    log._remove(0)
    assert log.last == -1
    log.add(Entry(1, 0, 2.0, "", b"", b"x"))
    assert (log.last, log.last_time()) == (0, 2.0)
