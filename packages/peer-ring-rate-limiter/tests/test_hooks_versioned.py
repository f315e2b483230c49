"""The store's versioned hooks (``VersionedDataHooks``): a delta carries exactly the
entries the receiver lacks, holds expired or holds at a lower seq, and reproduces what a
whole export does.

Unit level with hypothesis on two stores; node level on the in-memory network
(anti-entropy repairs a few diverged keys by moving those entries only)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer_ring.core import (
    DIGEST_BUCKETS,
    PeerRingConfig,
    VersionedDataHooks,
    fingerprint64,
    partition_for_key,
)
from peer_ring.core.testing import FakeClock, FixedDiscovery, MemoryNetwork, settle_loop
from peer_ring.ratelimit import CorruptStateError, Limit, RateLimiter
from peer_ring.ratelimit._state import TokenBucketState
from peer_ring.ratelimit._store import StateStore
from peer_ring.ratelimit._wire import Entry, decode_entry

NOW = 1000.0
P = 4
ALL = range(DIGEST_BUCKETS)

# (key, seq, kind): a live state, a tombstone (reset) or an entry expired on its node
Op = tuple[bytes, int, str]
ops_strategy = st.lists(
    st.tuples(
        st.binary(min_size=1, max_size=4),
        st.integers(1, 12),
        st.sampled_from(["live", "reset", "expired"]),
    ),
    max_size=40,
)


def store() -> StateStore:
    return StateStore(lambda: NOW, lambda k: partition_for_key(k, P), retain=30.0)


def build(s: StateStore, ops: list[Op], offset: int) -> None:
    for i, (key, seq, kind) in enumerate(ops):
        expires = NOW - 1.0 if kind == "expired" else NOW + 60.0
        state = None if kind == "reset" else TokenBucketState(float(offset + i), NOW - 0.5)
        s.put(key, Entry(seq, state, expires))


def contents(s: StateStore) -> dict[bytes, object]:
    """Entries by key; an expired entry means no entry, ordered by its seq: seq only."""
    out: dict[bytes, object] = {}
    for k in list(s.keys()):
        e = s.get(k)
        assert e is not None
        out[k] = e if e.expires > NOW else ("expired", e.seq)
    return out


def test_the_store_is_versioned() -> None:
    assert isinstance(store(), VersionedDataHooks)


@settings(deadline=None, max_examples=100)
@given(ops_strategy, ops_strategy)
def test_a_delta_equals_a_whole_export_and_carries_only_what_changes(
    source_ops: list[Op], receiver_ops: list[Op]
) -> None:
    source = store()
    build(source, source_ops, 0)
    whole, delta = store(), store()
    build(whole, receiver_ops, 1000)
    build(delta, receiver_ops, 1000)
    for p in range(P):
        whole.apply_records(p, list(source.export_partition(p)))
        known = dict(delta.record_versions(p, ALL))
        records = list(source.export_newer(p, ALL, known))
        # every entry sent changes the receiver: nothing moves that did not differ
        assert delta.apply_records(p, records) == len(records)
        assert delta.digest_partition(p) == whole.digest_partition(p)
        # and asking again brings nothing
        known = dict(delta.record_versions(p, ALL))
        assert list(source.export_newer(p, ALL, known)) == []
    assert contents(delta) == contents(whole)


def test_versions_are_seqs_and_an_entry_expired_on_the_receiver_is_replaced() -> None:
    source, receiver = store(), store()
    live = TokenBucketState(1.0, NOW)
    for key, mine, theirs in [
        (b"same", 3, 3),
        (b"older", 2, 5),  # the receiver is ahead: nothing to send
        (b"newer", 7, 4),
        (b"missing", 1, None),
    ]:
        source.put(key, Entry(mine, live, NOW + 60))
        if theirs is not None:
            receiver.put(key, Entry(theirs, live, NOW + 60))
    source.put(b"expired-there", Entry(1, live, NOW + 60))
    receiver.put(b"expired-there", Entry(9, live, NOW - 1))  # any record replaces it
    source.put(b"expired-both", Entry(4, live, NOW - 1))
    receiver.put(b"expired-both", Entry(4, None, NOW - 2))  # the same: no entry at seq 4
    sent: set[bytes] = set()
    for p in range(P):
        known = dict(receiver.record_versions(p, ALL))
        listed = {k for k in list(receiver.keys()) if partition_for_key(k, P) == p}
        assert set(known) == {fingerprint64(k) for k in listed}
        sent |= {decode_entry(r, NOW)[0] for r in source.export_newer(p, ALL, known)}
        assert list(receiver.record_versions(p, [])) == []  # no bucket asked, none listed
    assert sent == {b"newer", b"missing", b"expired-there"}


def test_a_malformed_version_is_a_clear_error() -> None:
    s = store()
    s.put(b"k", Entry(1, None, NOW + 60))
    p = partition_for_key(b"k", P)
    with pytest.raises(CorruptStateError, match="9 bytes"):
        list(s.export_newer(p, ALL, {fingerprint64(b"k"): b"\x01"}))


# -- a cluster on the in-memory network ---------------------------------------------------


async def test_anti_entropy_moves_only_the_diverged_entries() -> None:
    clock = FakeClock()
    network = MemoryNetwork(clock)
    peers = [f"127.0.0.{i}:7501" for i in range(1, 4)]
    # 640 keys in one partition: its 64 buckets hold about 10 keys each, so whole buckets
    # would move about 10 entries per diverged key.
    config = PeerRingConfig(partitions=4, anti_entropy_interval=1.0, down_after=None)
    nodes = [
        RateLimiter(
            FixedDiscovery(a, peers),
            replication=2,
            config=config,
            transport=network.transport(a),
            clock=clock,
            fail_policy="raise",
        )
        for a in peers
    ]
    for rl in nodes:
        await rl.start()
    try:
        await asyncio.gather(*(rl.node.wait_ready() for rl in nodes))
        await settle_loop()
        owner_address, replica_address = nodes[0].node.preference_list(b"k", 2)
        owner = next(rl for rl in nodes if rl.node.address == owner_address)
        replica = next(rl for rl in nodes if rl.node.address == replica_address)
        limit = Limit(100, 600.0, algorithm="fixed_window")
        p = nodes[0].node.partition_for_key(b"k")
        keys = [
            k for k in (f"key-{i}".encode() for i in range(5000)) if partition_for_key(k, 4) == p
        ]
        keys = keys[:640]
        assert len(keys) == 640
        for key in keys:
            assert (await owner.hit(key, limit)).allowed
        assert all(replica.store.get(k) == owner.store.get(k) for k in keys)
        before = [rl.node.sync_status()["partitions"] for rl in nodes]
        # Five decisions the replica missed (taken on the owner, not replicated).
        diverged = keys[::128]
        for key in diverged:
            entry = owner.store.get(key)
            assert entry is not None
            owner.store.put(key, Entry(entry.seq + 1, entry.state, entry.expires))
        for _ in range(100):  # bounded: anti-entropy runs about every second
            if all(replica.store.get(k) == owner.store.get(k) for k in diverged):
                break
            await clock.advance_async(0.5, settle=40)
        assert all(replica.store.get(k) == owner.store.get(k) for k in diverged)
        await clock.advance_async(3.0, settle=40)  # later rounds find nothing to move
        after = [rl.node.sync_status()["partitions"] for rl in nodes]

        def total(field: str, statuses: list[dict[str, int]]) -> int:
            return sum(s[field] for s in statuses)

        assert total("records_received", after) - total("records_received", before) == len(diverged)
        assert total("delta_requests", after) > total("delta_requests", before)
        assert total("buckets_transferred_whole", after) == total(
            "buckets_transferred_whole", before
        )
    finally:
        for rl in nodes:
            await rl.stop()
