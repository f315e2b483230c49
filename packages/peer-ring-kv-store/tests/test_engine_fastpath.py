"""The engine's fast paths keep its books exact: a from-scratch recomputation agrees.

``put`` accounts an overwrite in one pass (digest delta, size delta) and the read path
encodes GET answers straight from the stored bytes; these tests check both against
independent recomputations after random sequences of writes, overwrites, deletes,
expiries, evictions, collections and partition drops. A partition whose digest updates are
deferred (written more often than digested) has a stale digest until ``digests()``
recounts it: there the books are checked through what ``digests()`` returns, with the
deferral's thresholds at their defaults and at their smallest ("eager": every write past
the first defers, a partition of more than 2 records never does).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import farmhash
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer_ring.core import DIGEST_BUCKETS
from peer_ring.core.testing import FakeClock
from peer_ring.kv._engine import RECORD_OVERHEAD, KVEngine
from peer_ring.kv._record import Record
from peer_ring.kv._versions import Version
from peer_ring.kv._wire import decode_get_response, encode_entry, encode_get_response

START = 1_700_000_000.0
#: The conftest ``digest_deferral`` fixture (a test module cannot import its type).
Deferral = Callable[[str], AbstractContextManager[None]]
T0 = int(START * 1_000_000)
KEYS = [b"k%d" % i for i in range(12)]
# Many writers push records into the wide header (node index > 0xFFFF is out of reach,
# but logical > 0xFF and TTLs are not); one id is too long for the wire format.
NODES = ["10.0.0.1:7000", "10.0.0.2:7000", "n" * 300, "é:1"]

_COMPACT = struct.Struct("<QHB")
_WIDE = struct.Struct("<QIId")
_DIGEST_INPUT = struct.Struct("<QQIQB")
_DIGEST_OUTPUT = struct.Struct("<QI")


def recompute(engine: KVEngine) -> dict[str, object]:
    """Every count of ``engine`` computed from its stored records alone."""
    digests = []
    size = stored = tombstones = ttl = 0
    live: set[bytes] = set()
    for part in engine._parts:
        sums = [0] * DIGEST_BUCKETS
        counts = [0] * DIGEST_BUCKETS
        for key, blob in part.items():
            if blob[0] & 0x08:
                word, logical, node, _ = _WIDE.unpack_from(blob)
            else:
                word, node, logical = _COMPACT.unpack_from(blob)
            flags = word & 0xFF
            fp = farmhash.fingerprint64(key)
            bucket = (fp >> 32) % DIGEST_BUCKETS
            is_delete = 1 if flags & 0x05 == 0x01 else 0  # tombstone without TTL
            node_fp = farmhash.fingerprint64(engine._nodes[node])
            record = _DIGEST_INPUT.pack(fp, word >> 8, logical, node_fp, is_delete)
            sums[bucket] = (sums[bucket] + farmhash.fingerprint64(record)) % 2**64
            counts[bucket] += 1
            size += len(key) + len(blob) + RECORD_OVERHEAD
            stored += 1
            if flags & 0x01:
                tombstones += 1
            else:
                live.add(key)
                ttl += 1 if flags & 0x04 else 0
        digests.append(sums + counts)
    return {
        # A deferred partition's digest is checked through digests() (see run()).
        "digests": [d if engine._digest_budget[p] >= 0 else None for p, d in enumerate(digests)],
        "size": size,
        "stored": stored,
        "tombstones": tombstones,
        "ttl": ttl,
        "lru": live if engine.max_bytes is not None else None,
    }


def books(engine: KVEngine) -> dict[str, object]:
    """The counts ``engine`` maintains incrementally."""
    lru = engine._lru
    return {
        "digests": [
            list(d) if engine._digest_budget[p] >= 0 else None for p, d in enumerate(engine._digest)
        ],
        "size": engine.size_bytes,
        "stored": engine.stored,
        "tombstones": engine.tombstones,
        "ttl": engine.ttl_keys,
        "lru": None if lru is None else set(lru),
    }


def record(seq: int, node: int, kind: str, ttl: float, value: bytes, logical: int) -> Record:
    version = Version(T0 + seq, logical, NODES[node])
    if kind == "delete":
        return Record.deleted(version)
    return Record(value, version, START + ttl if ttl else 0.0, False, kind == "encoded")


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("put"),
            st.sampled_from(KEYS),
            st.integers(-5_000, 40_000),  # version time, ms after START (older ones lose)
            st.integers(0, len(NODES) - 1),
            st.sampled_from(["raw", "encoded", "delete"]),
            st.sampled_from([0.0, 0.0, -1.0, 0.5, 3.0]),  # TTL relative to START
            st.binary(max_size=40),
            st.sampled_from([0, 1, 300]),  # logical: 300 needs the wide header
        ),
        st.tuples(st.just("tick"), st.sampled_from([0.1, 1.0, 4.0, 30.0])),
        st.tuples(st.just("get"), st.sampled_from(KEYS)),
        st.tuples(st.just("expire_step")),
        st.tuples(st.just("digests"), st.integers(0, 3)),
        st.tuples(st.just("drop"), st.integers(0, 3)),
    ),
    max_size=60,
)


def run(engine: KVEngine, clock: FakeClock, steps: list[tuple[Any, ...]]) -> None:
    for step in steps:
        kind = step[0]
        if kind == "put":
            _, key, at, node, what, ttl, value, logical = step
            rec = record(at * 1000, node, what, ttl, value, logical)
            engine.put(key, rec)
        elif kind == "tick":
            clock.advance(step[1])
        elif kind == "get":
            engine.get(step[1])
        elif kind == "expire_step":
            engine.expire_step()
        elif kind == "digests":
            got = engine.digests(step[1])
            sums_counts = recompute(engine)["digests"][step[1]]  # type: ignore[index]
            assert engine._digest_budget[step[1]] >= 0  # recounted if it was deferred
            assert got == [
                _DIGEST_OUTPUT.pack(sums_counts[b], sums_counts[DIGEST_BUCKETS + b])
                if sums_counts[DIGEST_BUCKETS + b]
                else b""
                for b in range(DIGEST_BUCKETS)
            ]
        else:
            engine.drop(step[1])
        assert books(engine) == recompute(engine), step


@settings(deadline=None, max_examples=150)
@given(
    ops,
    st.sampled_from([None, 1_000, 100_000]),
    st.sampled_from([0.0, 2.0, 3600.0]),
    st.sampled_from(["default", "eager"]),
)
def test_books_equal_a_recomputation_after_any_sequence(
    digest_deferral: Deferral,
    steps: list[tuple[Any, ...]],
    max_bytes: int | None,
    grace: float,
    defer: str,
) -> None:
    clock = FakeClock(START)
    with digest_deferral(defer):
        engine = KVEngine(4, clock, max_bytes=max_bytes, tombstone_grace=grace)
        run(engine, clock, steps)
        for p in range(engine.partitions):  # every partition's digests, deferred or not
            run(engine, clock, [("digests", p)])


@settings(deadline=None, max_examples=100)
@given(ops, st.sampled_from([None, 100_000]))
def test_get_wire_answers_like_get_record_then_encode(
    steps: list[tuple[Any, ...]], max_bytes: int | None
) -> None:
    clock, reference_clock = FakeClock(START), FakeClock(START)
    engine = KVEngine(4, clock, max_bytes=max_bytes, tombstone_grace=2.0)
    reference = KVEngine(4, reference_clock, max_bytes=max_bytes, tombstone_grace=2.0)
    run(engine, clock, steps)
    run(reference, reference_clock, steps)  # the same history at the same times
    for key in KEYS:
        partition = engine.partition_of(key)
        expected = reference.get_record(key)
        if expected is not None and len(expected.version.node_id.encode()) > 255:
            with pytest.raises(ValueError, match="too large to encode"):
                engine.get_wire(key, partition)
            with pytest.raises(ValueError, match="too large to encode"):
                encode_get_response(expected)
        else:
            got = engine.get_wire(key, partition)
            assert got == encode_get_response(expected)
            assert decode_get_response(got) == expected
        assert books(engine) == books(reference)  # an expiry is noticed the same way


def attempt(make: Callable[[], list[bytes]]) -> object:
    try:
        return make()
    except ValueError as exc:
        return ("error", str(exc))


@settings(deadline=None, max_examples=100)
@given(ops, st.sampled_from([None, [0], [1, 5, 900], list(range(DIGEST_BUCKETS))]))
def test_export_entries_are_the_encoded_export(
    steps: list[tuple[Any, ...]], buckets: list[int] | None
) -> None:
    clock = FakeClock(START)
    engine = KVEngine(4, clock, tombstone_grace=2.0)
    run(engine, clock, steps)
    before = books(engine)
    for p in range(engine.partitions):
        fast = attempt(lambda p=p: list(engine.export_entries(p, buckets)))  # type: ignore[misc]
        reference = attempt(
            lambda p=p: [encode_entry(k, r) for k, r in engine.export(p, buckets)]  # type: ignore[misc]
        )
        assert fast == reference
    assert books(engine) == before  # exporting changes nothing
