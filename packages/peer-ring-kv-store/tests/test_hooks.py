"""Data-movement hooks: export -> apply reproduces a replica; deletes travel; digests."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer_ring.core import DIGEST_BUCKETS, DataHooks, bucket_for_key
from peer_ring.core.testing import FakeClock
from peer_ring.kv._engine import KVEngine
from peer_ring.kv._hooks import KVHooks
from peer_ring.kv._record import Record
from peer_ring.kv._versions import Version
from peer_ring.kv._wire import MalformedPayloadError, decode_entry, encode_entry

START = 1_700_000_000.0
P = 4


def v(n: int, node: str = "n1", logical: int = 0) -> Version:
    return Version(int(START * 1_000_000) + n, logical, node)


def replica(clock: FakeClock | None = None, **kwargs: object) -> tuple[KVEngine, KVHooks]:
    engine = KVEngine(P, clock or FakeClock(START), **kwargs)  # type: ignore[arg-type]
    return engine, KVHooks(engine)


def copy_all(source: KVHooks, target: KVHooks) -> None:
    for p in range(P):
        target.apply_records(p, list(source.export_partition(p)))


def all_records(engine: KVEngine) -> dict[bytes, Record]:
    return {key: record for p in range(P) for key, record in engine.export(p)}


records_strategy = st.lists(
    st.tuples(
        st.binary(min_size=1, max_size=12),
        st.integers(0, 1000),
        st.sampled_from(["n1", "n2"]),
        st.sampled_from(["value", "delete", "ttl-live", "ttl-expired"]),
        st.binary(max_size=20),
    ),
    max_size=60,
)


Op = tuple[bytes, int, str, str, bytes]
EXPIRES = {"value": 0.0, "ttl-live": START + 60.0, "ttl-expired": START - 1.0}


def apply_op(engine: KVEngine, i: int, op: Op) -> None:
    """Write op number ``i``; its version is unique per ``i`` (as the HLC guarantees)."""
    key, n, node, kind, value = op
    version = v(n, node, logical=i)
    if kind == "delete":
        engine.delete(key, version)
    else:
        engine.put(key, Record(value, version, EXPIRES[kind], False, i % 2 == 0))


def build(ops: list[Op], engine: KVEngine) -> None:
    for i, op in enumerate(ops):
        apply_op(engine, i, op)


def test_hooks_satisfy_the_core_protocol() -> None:
    _, hooks = replica()
    assert isinstance(hooks, DataHooks)


@settings(deadline=None, max_examples=60)
@given(records_strategy)
def test_export_then_apply_reproduces_the_replica(ops: list[Op]) -> None:
    source, source_hooks = replica()
    build(ops, source)
    target, target_hooks = replica()
    copy_all(source_hooks, target_hooks)
    assert all_records(target) == all_records(source)
    for p in range(P):
        assert target_hooks.digest_partition(p) == source_hooks.digest_partition(p)
    # Applying again changes nothing (idempotent).
    before = [target_hooks.digest_partition(p) for p in range(P)]
    copy_all(source_hooks, target_hooks)
    assert [target_hooks.digest_partition(p) for p in range(P)] == before
    assert all_records(target) == all_records(source)


@settings(deadline=None, max_examples=40)
@given(records_strategy, st.randoms(use_true_random=False))
def test_digests_do_not_depend_on_write_order(ops: list[Op], rnd: random.Random) -> None:
    first, first_hooks = replica()
    build(ops, first)
    indexed = list(enumerate(ops))
    rnd.shuffle(indexed)
    second, second_hooks = replica()
    for i, op in indexed:
        apply_op(second, i, op)
    for p in range(P):
        digests = first_hooks.digest_partition(p)
        assert len(digests) == DIGEST_BUCKETS
        assert digests == second_hooks.digest_partition(p)
        for bucket, digest in enumerate(digests):
            has_records = any(
                first.partition_of(k) == p and bucket_for_key(k) == bucket
                for k in all_records(first)
            )
            assert (digest != b"") == has_records


def test_digest_sees_a_one_record_difference() -> None:
    first, first_hooks = replica()
    second, second_hooks = replica()
    for engine in (first, second):
        for i in range(100):
            engine.put(b"key-%d" % i, Record(b"v", v(1)))
    second.put(b"key-7", Record(b"v2", v(2)))
    p, bucket = first.partition_of(b"key-7"), bucket_for_key(b"key-7")
    a, b = first_hooks.digest_partition(p), second_hooks.digest_partition(p)
    assert [i for i in range(DIGEST_BUCKETS) if a[i] != b[i]] == [bucket]


def test_delete_after_write_wins_whichever_order_records_arrive() -> None:
    origin, origin_hooks = replica()
    origin.put(b"k", Record(b"v", v(1)))
    (written,) = origin_hooks.export_partition(origin.partition_of(b"k"))
    origin.delete(b"k", v(2))
    (deleted,) = origin_hooks.export_partition(origin.partition_of(b"k"))
    assert decode_entry(deleted) == (b"k", Record.deleted(v(2)))  # the tombstone travels
    p = origin.partition_of(b"k")
    results = []
    for order in ([written, deleted], [deleted, written], [deleted], [written], [deleted] * 2):
        engine, hooks = replica()
        for entry in order:
            hooks.apply_records(p, [entry])
        if deleted in order:
            assert engine.get(b"k") is None
            assert engine.get_record(b"k") == Record.deleted(v(2))
            results.append(hooks.digest_partition(p))
    assert results[0] == results[1] == results[2] == results[3]


def test_expired_values_travel_as_tombstones_and_beat_older_values() -> None:
    clock = FakeClock(START)
    source, source_hooks = replica(clock)
    source.put(b"k", Record(b"short-lived", v(2), START + 5.0))
    stale, stale_hooks = replica(clock)
    stale.put(b"k", Record(b"older", v(1)))  # this replica missed the TTL write
    clock.advance(10.0)
    p = source.partition_of(b"k")
    exported = [decode_entry(e) for e in source_hooks.export_partition(p)]
    assert exported == [(b"k", Record(b"", v(2), START + 5.0, True, False))]
    stale_hooks.apply_records(p, list(source_hooks.export_partition(p)))
    assert stale.get(b"k") is None  # the older value did not survive
    assert stale_hooks.digest_partition(p) == source_hooks.digest_partition(p)


def test_noticing_an_expiry_does_not_change_the_digest() -> None:
    clock = FakeClock(START)
    noticed, noticed_hooks = replica(clock)
    unnoticed, unnoticed_hooks = replica(clock)
    for engine in (noticed, unnoticed):
        engine.put(b"k", Record(b"v", v(1), START + 5.0))
    clock.advance(6.0)
    assert noticed.get(b"k") is None  # turns it into a tombstone
    assert noticed.tombstones == 1 and unnoticed.tombstones == 0
    p = noticed.partition_of(b"k")
    assert noticed_hooks.digest_partition(p) == unnoticed_hooks.digest_partition(p)


def test_collected_records_are_not_exported_and_leave_the_digest() -> None:
    clock = FakeClock(START)
    engine, hooks = replica(clock, tombstone_grace=10.0)
    engine.delete(b"d", v(0))
    engine.put(b"t", Record(b"v", v(0), START + 1.0))
    p_d, p_t = engine.partition_of(b"d"), engine.partition_of(b"t")
    clock.advance(20.0)
    assert list(hooks.export_partition(p_d)) == []
    assert list(hooks.export_partition(p_t)) == []
    assert hooks.digest_partition(p_d) == [b""] * DIGEST_BUCKETS
    assert hooks.digest_partition(p_t) == [b""] * DIGEST_BUCKETS
    assert engine.stored == 0


def test_export_can_be_restricted_to_buckets() -> None:
    engine, hooks = replica()
    keys = [b"key-%d" % i for i in range(300)]
    for key in keys:
        engine.put(key, Record(b"v", v(1)))
    p = engine.partition_of(keys[0])
    wanted = {bucket_for_key(keys[0]), (bucket_for_key(keys[0]) + 1) % DIGEST_BUCKETS}
    exported = {decode_entry(e)[0] for e in hooks.export_partition(p, wanted)}
    assert exported == {
        k for k in keys if engine.partition_of(k) == p and bucket_for_key(k) in wanted
    }
    assert list(hooks.export_partition(p, [])) == []


def test_export_is_a_snapshot() -> None:
    engine, hooks = replica(FakeClock(START))
    for i in range(50):
        engine.put(b"key-%d" % i, Record(b"v", v(1)))
    p = engine.partition_of(b"key-0")
    stream = iter(hooks.export_partition(p))
    engine.put(b"key-0", Record(b"newer", v(2)))  # before the first item is consumed
    first = next(stream)
    for i in range(50, 500):  # writes while the transfer is in progress
        engine.put(b"key-%d" % i, Record(b"v", v(1)))
    exported = dict(decode_entry(e) for e in [first, *stream])
    assert set(exported) == {
        b"key-%d" % i for i in range(50) if engine.partition_of(b"key-%d" % i) == p
    }
    assert exported[b"key-0"] == Record(b"v", v(1))  # as it was when export was called


def test_a_malformed_batch_applies_nothing() -> None:
    engine, hooks = replica()
    good = encode_entry(b"a", Record(b"v", v(1)))
    p = engine.partition_of(b"a")
    with pytest.raises(MalformedPayloadError):
        hooks.apply_records(p, [good, good[:-1]])
    assert engine.stored == 0


def test_records_of_another_partition_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    engine, hooks = replica()
    key = b"a"
    other = (engine.partition_of(key) + 1) % P
    hooks.apply_records(other, [encode_entry(key, Record(b"v", v(1)))])
    assert engine.stored == 0
    assert hooks.misplaced == 1
    assert "belong to other partitions" in caplog.text


def test_drop_partition_forgets_it() -> None:
    engine, hooks = replica()
    for i in range(100):
        engine.put(b"key-%d" % i, Record(b"v", v(1)))
    p = engine.partition_of(b"key-0")
    in_p = engine.partition_len(p)
    hooks.drop_partition(p)
    assert engine.stored == 100 - in_p
    assert list(hooks.export_partition(p)) == []
    assert hooks.digest_partition(p) == [b""] * DIGEST_BUCKETS


def test_on_record_sees_every_applied_record() -> None:
    engine = KVEngine(P, FakeClock(START))
    seen: list[Record] = []
    hooks = KVHooks(engine, on_record=seen.append)
    records = [Record(b"v", v(1)), Record.deleted(v(2))]
    p = engine.partition_of(b"a")
    hooks.apply_records(p, [encode_entry(b"a", r) for r in records])
    assert seen == records
