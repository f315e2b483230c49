"""The storage engine: LWW merge, tombstones, lazy TTL, partitions, reconciliation."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer_ring.core import InvalidArgumentError, partition_for_key
from peer_ring.core.testing import FakeClock
from peer_ring.kv._engine import RECORD_OVERHEAD, KVEngine
from peer_ring.kv._record import Record, latest, reconcile
from peer_ring.kv._versions import MAX_LOGICAL, Version

START = 1_700_000_000.0
COMPACT, WIDE = 11, 24  # stored header sizes: plain records / records with a TTL


def header(record: Record) -> int:
    return WIDE if record.expires else COMPACT


def v(n: int, node: str = "a", logical: int = 0) -> Version:
    """A version ``n`` microseconds after the fake clock's start."""
    return Version(int(START * 1_000_000) + n, logical, node)


def make(partitions: int = 8, **kwargs: object) -> tuple[KVEngine, FakeClock]:
    clock = FakeClock(START)
    return KVEngine(partitions, clock, **kwargs), clock  # type: ignore[arg-type]


def test_put_then_get_returns_identical_record() -> None:
    engine, _ = make()
    record = Record(b"\x00value\xff", v(1, "n1", 3), 0.0, False, True)
    assert engine.put(b"k", record) is True
    assert engine.get(b"k") == record
    assert engine.get_record(b"k") == record
    assert engine.get(b"missing") is None
    assert len(engine) == 1


def test_newer_version_wins_older_and_equal_are_ignored() -> None:
    engine, _ = make()
    assert engine.put(b"k", Record(b"v2", v(2)))
    assert engine.put(b"k", Record(b"v1", v(1))) is False
    assert engine.put(b"k", Record(b"other", v(2))) is False  # same version: same write
    assert engine.get(b"k") == Record(b"v2", v(2))
    assert engine.put(b"k", Record(b"v3", v(3)))
    assert engine.get(b"k") == Record(b"v3", v(3))
    assert len(engine) == 1


def test_node_id_breaks_ties_the_same_way_everywhere() -> None:
    first, _ = make()
    second, _ = make()
    a, b = Record(b"from-a", v(5, "node-a")), Record(b"from-b", v(5, "node-b"))
    first.put(b"k", a)
    first.put(b"k", b)
    second.put(b"k", b)
    second.put(b"k", a)
    assert first.get(b"k") == second.get(b"k") == b


def test_delete_is_a_tombstone_that_beats_older_writes() -> None:
    engine, _ = make()
    engine.put(b"k", Record(b"v", v(1)))
    assert engine.delete(b"k", v(2))
    assert engine.get(b"k") is None
    assert engine.get_record(b"k") == Record.deleted(v(2))
    assert engine.put(b"k", Record(b"late", v(1, "z"))) is False  # no resurrection
    assert (len(engine), engine.tombstones, engine.stored) == (0, 1, 1)
    assert engine.put(b"k", Record(b"newer", v(3)))
    assert engine.get(b"k") == Record(b"newer", v(3))
    assert (len(engine), engine.tombstones) == (1, 0)


def test_delete_of_unknown_key_is_kept_for_late_writes() -> None:
    engine, _ = make()
    assert engine.delete(b"k", v(5))
    assert engine.put(b"k", Record(b"old", v(4))) is False
    assert engine.get(b"k") is None


def test_lazy_ttl() -> None:
    engine, clock = make()
    engine.put(b"k", Record(b"v", v(1), START + 10.0))
    size_live = engine.size_bytes
    clock.advance(9.999)
    assert engine.get(b"k") == Record(b"v", v(1), START + 10.0)
    assert engine.ttl_keys == 1
    clock.advance(0.001)  # expiry is inclusive: gone at exactly `expires`
    assert engine.get(b"k") is None
    assert engine.expired == 1
    assert engine.size_bytes == size_live - 1  # the value was freed
    assert (len(engine), engine.tombstones, engine.ttl_keys) == (0, 1, 0)
    # The version stays, as a tombstone, so an older write cannot come back.
    assert engine.get_record(b"k") == Record(b"", v(1), START + 10.0, True, False)
    assert engine.put(b"k", Record(b"older", v(0))) is False


def test_get_record_expires_lazily_too() -> None:
    engine, clock = make()
    engine.put(b"k", Record(b"v", v(1), START + 1.0, False, True))
    clock.advance(2.0)
    assert engine.get_record(b"k") == Record(b"", v(1), START + 1.0, True, False)
    assert engine.expired == 1


def test_record_arriving_expired_is_kept_as_a_tombstone() -> None:
    engine, _ = make()
    engine.put(b"k", Record(b"old", v(1)))
    assert engine.put(b"k", Record(b"gone", v(2), START - 1.0))
    assert engine.get(b"k") is None
    assert engine.get_record(b"k") == Record(b"", v(2), START - 1.0, True, False)


def test_tombstones_are_collected_after_the_grace_period() -> None:
    engine, clock = make(tombstone_grace=100.0)
    engine.delete(b"d", v(0))
    engine.put(b"t", Record(b"v", v(0), START + 10.0))
    engine.put(b"live", Record(b"v", v(0)))
    clock.advance(50.0)
    assert engine.get(b"t") is None  # expired: a tombstone until START + 10 + 100
    assert engine.collect_tombstones() == 0
    clock.advance(50.0)  # START + 100: the delete's grace is over
    assert engine.collect_tombstones() == 1
    assert engine.get_record(b"d") is None
    assert engine.get_record(b"t") is not None
    clock.advance(10.0)
    assert engine.collect_tombstones() == 1
    assert engine.get_record(b"t") is None
    assert engine.collected == 2
    assert (engine.stored, engine.tombstones, len(engine)) == (1, 0, 1)
    assert engine.size_bytes == len(b"live") + COMPACT + 1 + RECORD_OVERHEAD


def test_tombstone_past_its_grace_only_erases_older_state() -> None:
    engine, clock = make(tombstone_grace=10.0)
    clock.advance(100.0)
    assert engine.delete(b"absent", v(0)) is False  # nothing to erase, nothing kept
    assert engine.stored == 0
    engine.put(b"k", Record(b"v", v(-1)))
    assert engine.delete(b"k", v(0)) is True
    assert engine.get_record(b"k") is None
    assert engine.size_bytes == 0


def test_size_accounting_follows_every_change() -> None:
    engine, clock = make(tombstone_grace=1.0)

    def expected() -> int:
        total = 0
        for p in range(engine.partitions):
            for key, record in engine.export(p):
                total += len(key) + len(record.value) + header(record) + RECORD_OVERHEAD
        return total

    engine.put(b"a", Record(b"x" * 10, v(1)))
    engine.put(b"bb", Record(b"y" * 20, v(1), START + 5.0))
    assert engine.size_bytes == expected() == 33 + COMPACT + WIDE + 2 * RECORD_OVERHEAD
    engine.put(b"a", Record(b"z", v(2)))
    engine.delete(b"bb", v(3))
    assert engine.size_bytes == expected()
    clock.advance(10.0)
    engine.collect_tombstones()
    assert engine.size_bytes == expected() == 1 + 1 + COMPACT + RECORD_OVERHEAD


def test_partitions_group_keys_like_the_ring() -> None:
    engine, _ = make(partitions=16)
    keys = [b"key-%d" % i for i in range(200)]
    for key in keys:
        engine.put(key, Record(b"v", v(1)))
    for key in keys:
        assert engine.partition_of(key) == partition_for_key(key, 16)
    counts = [engine.partition_len(p) for p in range(16)]
    assert sum(counts) == 200
    assert counts == [sum(1 for k in keys if partition_for_key(k, 16) == p) for p in range(16)]


def test_drop_forgets_one_partition_only() -> None:
    engine, _ = make(partitions=4, max_bytes=10**6)
    keys = [b"key-%d" % i for i in range(100)]
    for i, key in enumerate(keys):
        if i % 3 == 0:
            engine.delete(key, v(1))
        else:
            engine.put(key, Record(b"v", v(1), START + 50.0 if i % 2 else 0.0))
    victim = engine.partition_of(keys[0])
    dropped = engine.drop(victim)
    assert dropped == sum(1 for k in keys if engine.partition_of(k) == victim)
    assert engine.partition_len(victim) == 0
    assert all(engine.get_record(k) is None for k in keys if engine.partition_of(k) == victim)
    survivors = [k for k in keys if engine.partition_of(k) != victim]
    assert engine.stored == len(survivors)
    assert all(engine.get_record(k) is not None for k in survivors)
    assert engine.digests(victim) == [b""] * 64
    assert engine.size_bytes == sum(
        len(k) + len(r.value) + header(r) + RECORD_OVERHEAD
        for p in range(4)
        for k, r in engine.export(p)
    )
    assert engine.ttl_keys == sum(
        1 for p in range(4) for _, r in engine.export(p) if r.expires and not r.tombstone
    )


@pytest.mark.parametrize(
    "record",
    [
        Record(b"v", v(1, "n", logical=255)),  # the compact header's largest logical
        Record(b"v", v(1, "n", logical=256)),  # needs the wide header
        Record(b"v" * 300, v(1, "n", logical=MAX_LOGICAL), START + 5.0, False, True),
        Record(b"", v(1, "n", logical=1000), 0.0, True, False),
    ],
)
def test_both_header_formats_round_trip(record: Record) -> None:
    engine, _ = make()
    engine.put(b"k", record)
    assert engine.get_record(b"k") == record
    assert engine.get(b"k") == (None if record.tombstone else record)
    assert [r for _, r in engine.export(engine.partition_of(b"k"))] == [record]


@settings(deadline=None, max_examples=50)
@given(
    st.integers(0, 2**56 - 1),
    st.integers(0, MAX_LOGICAL),
    st.text(max_size=10),
    st.sampled_from([0.0, START + 1.0]),
    st.booleans(),
    st.binary(max_size=40),
)
def test_any_version_round_trips(
    physical: int, logical: int, node: str, expires: float, encoded: bool, value: bytes
) -> None:
    engine, _ = make(tombstone_grace=10.0**12)
    record = Record(value, Version(physical, logical, node), expires, False, encoded)
    assert engine.put(b"k", record)
    assert engine.get(b"k") == record


def test_many_writers_spill_into_the_wide_header() -> None:
    engine, _ = make(partitions=1)
    writers = 0x10000 + 2  # more node ids than the compact header can index
    for i in range(writers):
        engine.put(b"k%d" % (i % 4), Record(b"v", v(i, f"node-{i}")))
    for i in range(writers - 4, writers):
        assert engine.get(b"k%d" % (i % 4)) == Record(b"v", v(i, f"node-{i}"))


def test_put_validates_its_input() -> None:
    engine, _ = make()
    with pytest.raises(TypeError, match="keys are bytes"):
        engine.put("k", Record(b"v", v(1)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="out of range"):
        engine.put(b"k", Record(b"v", Version(-1, 0, "a")))
    with pytest.raises(ValueError, match="out of range"):
        engine.put(b"k", Record(b"v", Version(2**56, 0, "a")))
    with pytest.raises(ValueError, match="finite"):
        engine.put(b"k", Record(b"v", v(1), float("nan")))
    assert engine.stored == 0


@pytest.mark.parametrize(
    "kwargs",
    [{"partitions": 0}, {"max_bytes": 0}, {"tombstone_grace": -1.0}],
)
def test_constructor_validates(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"partitions": 8, **kwargs}
    with pytest.raises(InvalidArgumentError):
        KVEngine(clock=FakeClock(), **args)  # type: ignore[arg-type]


def test_stats_reports_every_counter() -> None:
    engine, _ = make(max_bytes=10**6)
    engine.put(b"a", Record(b"v", v(1), START + 1.0))
    engine.delete(b"b", v(1))
    assert engine.stats() == {
        "keys": 1,
        "tombstones": 1,
        "ttl_keys": 1,
        "size_bytes": engine.size_bytes,
        "max_bytes": 10**6,
        "evictions": 0,
        "expired": 0,
        "collected": 0,
    }


# ----------------------------------------------------------------------- convergence

keys = st.sampled_from([b"a", b"b", b"c", b"d", b"e"])
writes = st.lists(
    st.tuples(
        keys,
        st.integers(0, 20),  # microseconds after START
        st.sampled_from(["n1", "n2", "n3"]),
        st.booleans(),  # tombstone
        st.sampled_from([0.0, START - 1.0, START + 1.0]),  # no TTL, expired, live
        st.binary(max_size=6),
    ),
    max_size=30,
)


def as_records(ops: list[tuple[bytes, int, str, bool, float, bytes]]) -> list[tuple[bytes, Record]]:
    out = []
    for i, (key, n, node, tomb, expires, value) in enumerate(ops):
        version = v(n, node, logical=i)  # unique per write, as the HLC guarantees
        record = Record.deleted(version) if tomb else Record(value, version, expires)
        out.append((key, record))
    return out


@settings(deadline=None, max_examples=60)
@given(writes, st.randoms(use_true_random=False))
def test_replicas_converge_whatever_the_order(
    ops: list[tuple[bytes, int, str, bool, float, bytes]], rnd: random.Random
) -> None:
    records = as_records(ops)
    first, _ = make()
    for key, record in records:
        first.put(key, record)
    second, _ = make()
    shuffled = records * 2  # every record twice: merges are idempotent
    rnd.shuffle(shuffled)
    for key, record in shuffled:
        second.put(key, record)
    for key in [b"a", b"b", b"c", b"d", b"e"]:
        candidates = [r for k, r in records if k == key]
        expected = max(candidates, key=lambda r: r.version) if candidates else None
        got = first.get_record(key)
        assert got == second.get_record(key)
        if expected is None:
            assert got is None
        else:
            assert got is not None and got.version == expected.version
            live = expected.is_live(START)
            assert got.tombstone is not live
            assert first.get(key) == (expected if live else None)
    for p in range(first.partitions):
        assert first.digests(p) == second.digests(p)
    assert (first.size_bytes, len(first), first.tombstones) == (
        second.size_bytes,
        len(second),
        second.tombstones,
    )


# ----------------------------------------------------------------------- reconcile


def test_reconcile_defaults_to_the_highest_version() -> None:
    old, new, gone = Record(b"old", v(1)), Record(b"new", v(3)), Record.deleted(v(2))
    assert reconcile(b"k", [old, None, new, gone]) == new
    assert reconcile(b"k", [old, gone]) == gone
    assert reconcile(b"k", [None, None]) is None
    assert reconcile(b"k", []) is None
    assert latest(b"k", [old, new, gone]) == new


def test_reconcile_calls_the_resolver_with_distinct_records_newest_first() -> None:
    calls: list[tuple[bytes, list[Record]]] = []

    def longest(key: bytes, records: list[Record]) -> Record:
        calls.append((key, records))
        return max(records, key=lambda r: len(r.value))

    a, b, c = Record(b"aaaa", v(1)), Record(b"b", v(3)), Record(b"cc", v(2))
    assert reconcile(b"k", [a, b, b, c, None], longest) == a
    assert calls == [(b"k", [b, c, a])]
    # Replicas that agree need no resolution.
    assert reconcile(b"k", [b, b], longest) == b
    assert len(calls) == 1


def test_reconcile_checks_the_resolver_result() -> None:
    def broken(key: bytes, records: list[Record]) -> Record:
        return b"not a record"  # type: ignore[return-value]

    with pytest.raises(TypeError, match="resolver returned bytes"):
        reconcile(b"k", [Record(b"a", v(1)), Record(b"b", v(2))], broken)


def test_engine_reconcile_uses_its_resolver() -> None:
    def lowest(key: bytes, records: list[Record]) -> Record:
        return records[-1]

    engine, _ = make(resolver=lowest)
    a, b = Record(b"a", v(1)), Record(b"b", v(2))
    assert engine.reconcile(b"k", [a, b]) == a
    engine.resolver = None
    assert engine.reconcile(b"k", [a, b]) == b


def test_record_helpers() -> None:
    record = Record(b"v", v(0), START + 5.0)
    assert record.is_live(START + 4.9) and not record.is_expired(START + 4.9)
    assert record.is_expired(START + 5.0) and not record.is_live(START + 5.0)
    assert record.collect_at(10.0) == START + 15.0
    assert Record.deleted(v(0)).collect_at(10.0) == START + 10.0
    assert not Record.deleted(v(0)).is_live(START)
