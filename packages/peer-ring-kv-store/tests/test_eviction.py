"""Memory bound: max_bytes respected, LRU order, tombstones evicted last, counters."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer_ring.core import InvalidArgumentError
from peer_ring.core.testing import FakeClock
from peer_ring.kv._engine import RECORD_OVERHEAD, KVEngine
from peer_ring.kv._record import Record
from peer_ring.kv._versions import Version

START = 1_700_000_000.0
HEADER = 11  # the compact stored header (no TTL)
VALUE = b"x" * 100
# Accounted size of one record with a 2-byte key and VALUE.
ONE = 2 + len(VALUE) + HEADER + RECORD_OVERHEAD


def v(n: int) -> Version:
    return Version(int(START * 1_000_000) + n, 0, "n1")


def bounded(records: int) -> KVEngine:
    return KVEngine(8, FakeClock(START), max_bytes=records * ONE)


def put(engine: KVEngine, key: bytes, n: int = 1) -> None:
    assert engine.put(key, Record(VALUE, v(n)))


def test_least_recently_used_goes_first() -> None:
    engine = bounded(3)
    for key in (b"k1", b"k2", b"k3"):
        put(engine, key)
    assert engine.size_bytes == 3 * ONE
    assert engine.get(b"k1") is not None  # k1 is now the most recent
    put(engine, b"k4")
    assert engine.evictions == 1
    assert engine.get(b"k2") is None
    assert [engine.get(k) is not None for k in (b"k1", b"k3", b"k4")] == [True] * 3
    assert engine.size_bytes == 3 * ONE


def test_writes_and_replica_reads_count_as_use() -> None:
    engine = bounded(3)
    for key in (b"k1", b"k2", b"k3"):
        put(engine, key)
    put(engine, b"k1", 2)  # overwrite refreshes k1
    assert engine.get_record(b"k2") is not None  # a replica read refreshes k2
    put(engine, b"k4")
    assert engine.get(b"k3") is None
    assert all(engine.get(k) is not None for k in (b"k1", b"k2", b"k4"))


def test_one_write_can_evict_several_records() -> None:
    engine = bounded(3)
    for key in (b"k1", b"k2", b"k3"):
        put(engine, key)
    big = Record(b"y" * (2 * ONE), v(1))
    assert engine.put(b"kb", big)
    assert engine.size_bytes <= engine.max_bytes  # type: ignore[operator]
    assert engine.evictions == 3
    assert engine.get(b"kb") == big


def test_tombstones_are_evicted_only_when_no_live_record_is_left() -> None:
    engine = bounded(4)
    tomb = 2 + HEADER + RECORD_OVERHEAD
    engine.delete(b"d1", v(1))
    engine.delete(b"d2", v(2))
    put(engine, b"k1")
    put(engine, b"k2")
    assert engine.size_bytes == 2 * tomb + 2 * ONE
    put(engine, b"k3")  # over the bound: a live record goes, not a tombstone
    assert engine.tombstones == 2
    assert engine.get(b"k1") is None
    # A record too big for the bound with both the live ones gone evicts tombstones last,
    # oldest collection time first.
    huge = Record(b"z" * (4 * ONE - 2 - HEADER - RECORD_OVERHEAD - tomb), v(9))
    assert engine.put(b"kh", huge)
    assert engine.get_record(b"d1") is None
    assert engine.get_record(b"d2") == Record.deleted(v(2))
    assert engine.size_bytes <= 4 * ONE
    assert engine.evictions == 4  # k1, k2, k3, d1


def test_a_record_larger_than_the_bound_is_refused() -> None:
    engine = bounded(1)
    with pytest.raises(InvalidArgumentError, match="cannot fit in max_bytes"):
        engine.put(b"k", Record(b"x" * ONE, v(1)))
    assert engine.stored == 0


def test_unbounded_engine_never_evicts() -> None:
    engine = KVEngine(8, FakeClock(START))
    for i in range(500):
        put(engine, b"k%d" % i)
    assert engine.evictions == 0
    assert len(engine) == 500
    assert engine.max_bytes is None


TOMB = 2 + HEADER + RECORD_OVERHEAD  # accounted size of a tombstone with a 2-byte key


def live_keys(engine: KVEngine) -> set[bytes]:
    """Live keys, read through export so that the LRU order is not touched."""
    return {
        key
        for p in range(engine.partitions)
        for key, record in engine.export(p)
        if not record.tombstone
    }


@settings(deadline=None, max_examples=60)
@given(
    st.integers(1, 6),
    st.lists(st.tuples(st.sampled_from(["put", "get", "delete"]), st.integers(0, 9)), max_size=60),
)
def test_bound_and_lru_order_against_a_model(capacity: int, ops: list[tuple[str, int]]) -> None:
    """Same-size records, room for every possible tombstone: the engine is an exact LRU."""
    limit = capacity * ONE + 10 * TOMB
    engine = KVEngine(4, FakeClock(START), max_bytes=limit)
    model: list[bytes] = []  # live keys, least recently used first
    tombstones: set[bytes] = set()
    evictions = 0
    for i, (op, k) in enumerate(ops):
        key = b"k%d" % k
        if op == "get":
            found = engine.get(key) is not None
            assert found == (key in model)
            if found:
                model.remove(key)
                model.append(key)
            continue
        if key in model:
            model.remove(key)
        if op == "put":
            put(engine, key, i + 1)
            tombstones.discard(key)
            model.append(key)
        else:
            engine.delete(key, v(i + 1))
            tombstones.add(key)
        while len(model) * ONE + len(tombstones) * TOMB > limit:
            model.pop(0)
            evictions += 1
        assert engine.size_bytes <= limit
        assert engine.size_bytes == len(model) * ONE + len(tombstones) * TOMB
        assert engine.evictions == evictions
        assert live_keys(engine) == set(model)
        assert list(engine._lru or ()) == model  # the exact recency order
