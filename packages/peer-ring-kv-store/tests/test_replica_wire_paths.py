"""The per-operation paths that skip Record objects give what the Record paths give.

- A replica stores a SET payload with ``KVEngine.put_wire`` (fields read from the bytes,
  the common write stored inline) instead of ``put(decode_record(payload))``: same
  results, same records, same books (digests and their deferral, sizes, counts), for any
  history, malformed payloads included, with the digest deferral's thresholds as shipped
  and at their smallest.
- ``set()`` encodes its record itself (``KVStore._payload``): byte for byte
  ``encode_record`` of the record ``_record`` builds, with the same errors.
- A read whose replies agree takes the value from the bytes (``agreed_value``): the value
  the general reconciliation returns, or ``None`` (then the general path runs).
- ``HLC.observe`` keeps ``update``'s guarantee and reads no clock when already past.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer_ring.core import Reply
from peer_ring.core.testing import FakeClock
from peer_ring.discovery.static import StaticDiscovery
from peer_ring.kv import KVStore
from peer_ring.kv._engine import KVEngine
from peer_ring.kv._errors import ValueTooLargeError
from peer_ring.kv._hlc import HLC
from peer_ring.kv._record import Record
from peer_ring.kv._replies import ABSENT, agreed_value, reconcile_answers
from peer_ring.kv._versions import Version
from peer_ring.kv._wire import (
    MalformedPayloadError,
    decode_record,
    encode_get_response,
    encode_record,
)

START = 1_700_000_000.0
#: The conftest ``digest_deferral`` fixture (a test module cannot import its type).
Deferral = Callable[[str], AbstractContextManager[None]]
T0 = int(START * 1_000_000)
KEYS = [b"k%d" % i for i in range(8)]
NODES = ["10.0.0.1:7000", "10.0.0.2:7000", "é:1"]


def state(engine: KVEngine) -> dict[str, object]:
    """Everything a write can change, as plain values."""
    lru = engine._lru
    return {
        "records": {k: engine.get_record(k) for k in KEYS},
        "digests": [list(d) for d in engine._digest],
        "budgets": list(engine._digest_budget),
        "size": engine.size_bytes,
        "stored": engine.stored,
        "tombstones": engine.tombstones,
        "ttl": engine.ttl_keys,
        "lru": None if lru is None else list(lru),
    }


def make_record(at: int, node: int, kind: str, ttl: float, value: bytes, logical: int) -> Record:
    version = Version(T0 + at * 1000, logical, NODES[node])
    if kind == "delete":
        return Record.deleted(version)
    return Record(value, version, START + ttl if ttl else 0.0, False, kind == "encoded")


def mangle(data: bytes, changes: list[tuple[int, int]], cut: int) -> bytes:
    out = bytearray(data)
    for at, byte in changes:
        out[at % len(out)] = byte
    return bytes(out[: len(out) - cut])


def replica_write(engine: KVEngine, key: bytes, payload: bytes, seen: list[Any]) -> object:
    """What ``KVStore._h_set`` does with a peer's payload (ready partition)."""
    try:
        stored = engine.put_wire(key, payload, lambda *version: seen.append(version))
        if stored is None:
            record = decode_record(payload)
            seen.append(tuple(record.version))
            stored = engine.put(key, record)
        return stored
    except (MalformedPayloadError, ValueError) as exc:
        return ("error", type(exc).__name__, str(exc))


def reference_write(engine: KVEngine, key: bytes, payload: bytes, seen: list[Any]) -> object:
    """The Record path: decode, observe, put."""
    try:
        record = decode_record(payload)
        seen.append(tuple(record.version))
        return engine.put(key, record)
    except (MalformedPayloadError, ValueError) as exc:
        return ("error", type(exc).__name__, str(exc))


writes = st.lists(
    st.one_of(
        st.tuples(
            st.just("put"),
            st.sampled_from(KEYS),
            st.integers(-5_000, 40_000),
            st.integers(0, len(NODES) - 1),
            st.sampled_from(["raw", "encoded", "delete"]),
            st.sampled_from([0.0, 0.0, -1.0, 0.5, 3.0]),
            st.binary(max_size=30),
            st.sampled_from([0, 1, 300]),
            st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=2),
            st.sampled_from([0, 0, 0, 1]),
        ),
        st.tuples(st.just("tick"), st.sampled_from([0.1, 1.0, 4.0])),
        st.tuples(st.just("digests"), st.integers(0, 3)),
    ),
    max_size=50,
)


@settings(deadline=None, max_examples=150)
@given(writes, st.sampled_from([None, 2_000]), st.sampled_from(["default", "eager"]))
def test_put_wire_stores_what_put_of_the_decoded_record_stores(
    digest_deferral: Deferral, steps: list[tuple[Any, ...]], max_bytes: int | None, defer: str
) -> None:
    with digest_deferral(defer):
        check_put_wire_against_put(steps, max_bytes)


def check_put_wire_against_put(steps: list[tuple[Any, ...]], max_bytes: int | None) -> None:
    clock, reference_clock = FakeClock(START), FakeClock(START)
    engine = KVEngine(4, clock, max_bytes=max_bytes, tombstone_grace=2.0)
    reference = KVEngine(4, reference_clock, max_bytes=max_bytes, tombstone_grace=2.0)
    for step in steps:
        if step[0] == "tick":
            clock.advance(step[1])
            reference_clock.advance(step[1])
            continue
        if step[0] == "digests":
            assert engine.digests(step[1]) == reference.digests(step[1])
            assert state(engine) == state(reference)
            continue
        _, key, at, node, kind, ttl, value, logical, changes, cut = step
        payload = mangle(
            encode_record(make_record(at, node, kind, ttl, value, logical)), changes, cut
        )
        seen: list[Any] = []
        expected_seen: list[Any] = []
        got = replica_write(engine, key, payload, seen)
        assert got == reference_write(reference, key, payload, expected_seen), payload
        assert seen == expected_seen  # the HLC sees the same versions
        assert state(engine) == state(reference)


def test_put_wire_leaves_unknown_writers_and_malformed_payloads_to_the_caller() -> None:
    engine = KVEngine(4, FakeClock(START))
    payload = encode_record(Record(b"v", Version(T0, 0, "new-writer")))
    assert engine.put_wire(b"k", payload, None) is None  # a writer never seen
    assert engine.get_record(b"k") is None
    assert engine.put(b"k", decode_record(payload)) is True
    newer = encode_record(Record(b"w", Version(T0 + 1, 0, "new-writer")))
    assert engine.put_wire(b"k", newer, None) is True  # now known: the fast path
    assert engine.put_wire(b"k", newer, None) is False  # the same version again
    for bad in (newer[:-1], newer + b"x", b"\x04" + newer[1:], b""):
        assert engine.put_wire(b"k", bad, None) is None
    assert engine.get_record(b"k") == decode_record(newer)


def store(clock: FakeClock, **kwargs: Any) -> KVStore:
    address = "127.0.0.1:7601"
    return KVStore(StaticDiscovery([address], self_address=address), clock=clock, **kwargs)


@pytest.mark.parametrize(
    "value", [b"raw \x00 bytes", b"", "text é", {"doc": [1, 2]}, 12, bytearray(b"ba")]
)
@pytest.mark.parametrize("ttl", [None, 0.25, 30])
def test_set_payload_is_encode_record_of_the_record(value: object, ttl: float | None) -> None:
    clock = FakeClock(START)
    kv = store(clock)
    first = kv._payload(value, ttl)
    record = decode_record(first)
    # The same call through _record (the next version of the same HLC tick).
    reference = kv._record(value, ttl)
    assert record.version == reference.version._replace(logical=reference.version.logical - 1)
    assert first == encode_record(reference._replace(version=record.version))
    assert record.version.node_id == kv.node.address
    assert record.expires == (0.0 if ttl is None else START + ttl)


def test_set_payload_refuses_what_encode_record_refuses() -> None:
    kv = store(FakeClock(START), max_value_bytes=10)
    with pytest.raises(ValueTooLargeError):
        kv._payload(b"x" * 11, None)
    far = store(FakeClock(2e13))  # 2e19 microseconds: beyond the u64 of the wire
    with pytest.raises(ValueError, match="version out of range"):
        far._payload(b"v", None)


def answers(records: list[Record | None]) -> list[Reply]:
    return [Reply(f"n{i}", encode_get_response(r)) for i, r in enumerate(records)]


answer_records = st.one_of(
    st.none(),
    st.builds(
        lambda value, at, logical, node, ttl, kind: (
            Record.deleted(Version(T0 + at, logical, NODES[node]))
            if kind == "delete"
            else Record(value, Version(T0 + at, logical, NODES[node]), ttl, False, kind == "enc")
        ),
        st.binary(max_size=10),
        st.integers(0, 3),
        st.integers(0, 2),
        st.integers(0, len(NODES) - 1),
        st.sampled_from([0.0, START - 1, START + 1]),
        st.sampled_from(["raw", "enc", "delete"]),
    ),
)


@settings(deadline=None, max_examples=300)
@given(
    st.lists(answer_records, min_size=1, max_size=3),
    st.booleans(),
    st.lists(st.tuples(st.integers(0, 100), st.integers(0, 255)), max_size=2),
)
def test_agreed_value_is_the_reconciled_value(
    records: list[Record | None], same: bool, changes: list[tuple[int, int]]
) -> None:
    if same:
        records = [records[0]] * len(records)
    replies = answers(records)
    if changes:
        replies[0] = Reply("n0", mangle(replies[0].payload, changes, 0))
    replies.append(Reply("failed", b"", RuntimeError("down")))  # errors are not answers
    for record in records:  # the decoder has seen these writers (as a node soon has)
        if record is not None:
            decode_record(encode_record(record))
    clock = FakeClock(START)
    try:
        winner, _ = reconcile_answers(b"k", [r.payload for r in replies[:-1]], None)
        expected: object = (
            ABSENT
            if winner is None or not winner.is_live(START)
            else (winner.value, winner.encoded)
        )
    except MalformedPayloadError:
        expected = "error"
    got = agreed_value(replies, clock)
    if got is not None:
        assert got == expected
    payloads = {r.payload for r in replies[:-1]}
    if len(payloads) == 1 and not changes:
        assert got == expected  # agreeing, well-formed answers take the fast path


def test_agreed_value_leaves_differing_answers_to_reconciliation() -> None:
    old = Record(b"old", Version(T0, 0, NODES[0]))
    new = Record(b"new", Version(T0 + 1, 0, "agreed-writer:1"))
    assert agreed_value(answers([old, new]), FakeClock(START)) is None
    assert agreed_value(answers([None, None]), FakeClock(START)) == ABSENT
    assert agreed_value(answers([new, new]), FakeClock(START)) is None  # writer not checked yet
    decode_record(encode_record(new))
    assert agreed_value(answers([new, new]), FakeClock(START)) == (b"new", False)


class CountingClock(FakeClock):
    reads = 0

    def time(self) -> float:
        self.reads += 1
        return super().time()


def test_observe_keeps_updates_guarantee_without_a_clock_read_when_past() -> None:
    clock = CountingClock(START)
    hlc = HLC(clock, "me:1")
    remote = Version(T0 + 5_000, 7, "peer:1")
    hlc.observe(remote.physical, remote.logical, remote.node_id)
    assert hlc.now() > remote
    assert hlc.last.physical == remote.physical
    reads = clock.reads
    hlc.observe(remote.physical, remote.logical, remote.node_id)  # already past it
    hlc.observe(T0, 0, "peer:1")
    assert clock.reads == reads
    later = Version(T0 + 5_000, 9, "peer:1")
    hlc.observe(later.physical, later.logical, later.node_id)
    assert hlc.now() > later


def test_observe_is_subject_to_the_drift_guard() -> None:
    hlc = HLC(FakeClock(START), "me:1", max_drift=1.0)
    hlc.observe(T0 + 5_000_000, 0, "far:1")
    assert hlc.drift_rejections == 1
    assert hlc.now().physical < T0 + 5_000_000
