"""The store's partition digests: the same bytes as the plain per-bucket computation, kept
until the partition changes (every change drops them), and no work for an empty partition.

The core asks for the digests of every partition two nodes share in one pass of the event
loop (an anti-entropy round); these tests pin what may be cached and when it must not be.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from peer_ring.core import DIGEST_BUCKETS, bucket_for_key, partition_for_key
from peer_ring.ratelimit._state import FixedWindowState
from peer_ring.ratelimit._store import StateStore
from peer_ring.ratelimit._wire import Entry, encode_entry

P = 4
NOW = [1000.0]


def store(retain: float = 30.0) -> StateStore:
    return StateStore(lambda: NOW[0], lambda k: partition_for_key(k, P), retain=retain)


def reference(s: StateStore, partition: int) -> list[bytes]:
    """The per-bucket digests computed from scratch (what a node of any version sends)."""
    acc: list[list[bytes]] = [[] for _ in range(DIGEST_BUCKETS)]
    for k in list(s.keys()):
        if partition_for_key(k, P) != partition:
            continue
        e = s.get(k)
        assert e is not None
        acc[bucket_for_key(k)].append(len(k).to_bytes(2, "big") + k + e.seq.to_bytes(8, "big"))
    out = []
    for items in acc:
        if not items:
            out.append(b"")
            continue
        h = hashlib.blake2b(digest_size=16)
        for item in sorted(items):
            h.update(item)
        out.append(h.digest())
    return out


def entry(seq: int, expires: float = NOW[0] + 60.0) -> Entry:
    return Entry(seq, FixedWindowState(NOW[0] - 1.0, seq), expires)


def same(a: Sequence[bytes], b: Sequence[bytes]) -> bool:
    return list(a) == list(b)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.binary(min_size=1, max_size=3), st.integers(1, 9), st.booleans()),
        max_size=40,
    )
)
def test_digests_match_the_plain_computation_after_any_changes(
    ops: list[tuple[bytes, int, bool]],
) -> None:
    s = store()
    for key, seq, by_merge in ops:
        # Digests are taken between changes, so a stale cached value would show.
        for p in range(P):
            assert same(s.digest_partition(p), reference(s, p))
        if by_merge:
            s.merge(key, entry(seq), partition_for_key(key, P))
        else:
            s.put(key, entry(seq))
    for p in range(P):
        assert same(s.digest_partition(p), reference(s, p))


def test_an_empty_partition_has_empty_digests() -> None:
    s = store()
    assert list(s.digest_partition(0)) == [b""] * DIGEST_BUCKETS


def test_sweep_drop_and_applied_records_drop_the_cached_digests() -> None:
    s = store(retain=5.0)
    keys = [f"k{i}".encode() for i in range(40)]
    for i, k in enumerate(keys):
        s.put(k, entry(1, expires=NOW[0] + (1.0 if i % 2 else 60.0)))
    p = partition_for_key(keys[0], P)
    before = list(s.digest_partition(p))
    # Half the entries expire and are swept: the partition's digests change.
    NOW[0] += 10.0
    try:
        assert s.sweep() > 0
        assert same(s.digest_partition(p), reference(s, p))
        assert list(s.digest_partition(p)) != before
        # A record merged from another node (data movement) changes them too.
        other = store()
        other.put(keys[0], entry(7))
        rec = encode_entry(keys[0], entry(7), NOW[0])
        assert s.apply_records(p, [rec]) == 1
        assert same(s.digest_partition(p), reference(s, p))
        # Dropping the partition leaves it empty.
        s.drop_partition(p)
        assert list(s.digest_partition(p)) == [b""] * DIGEST_BUCKETS
    finally:
        NOW[0] -= 10.0


def test_an_unchanged_partition_is_not_recomputed() -> None:
    s = store()
    k = b"k"
    s.put(k, entry(1))
    p = partition_for_key(k, P)
    first = s.digest_partition(p)
    assert s.digest_partition(p) is first  # kept
    s.merge(k, entry(1), p)  # not newer: no change, digests kept
    assert s.digest_partition(p) is first
    s.merge(k, entry(2), p)
    assert s.digest_partition(p) is not first
    assert same(s.digest_partition(p), reference(s, p))
