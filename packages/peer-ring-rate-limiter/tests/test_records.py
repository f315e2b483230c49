"""Replication's codec on the store's tuples (``_records``) against the general codec."""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from peer_ring.ratelimit import Algorithm, CorruptStateError, Limit, decide
from peer_ring.ratelimit._compact import pack
from peer_ring.ratelimit._records import decode_packed, encode_packed
from peer_ring.ratelimit._store import StateStore
from peer_ring.ratelimit._wire import Entry, decode_entry, encode_entry

ALGORITHMS = tuple(Algorithm)


@st.composite
def entries(draw: st.DrawFn) -> Entry:
    """An entry as the owner stores it after a few decisions (or a tombstone)."""
    seq = draw(st.integers(1, 2**40))
    if draw(st.booleans()) and draw(st.booleans()):
        return Entry(seq, None, draw(st.floats(-1e6, 1e6)))
    algorithm = draw(st.sampled_from(ALGORITHMS))
    limit = Limit(draw(st.integers(1, 50)), draw(st.floats(0.01, 100.0)), algorithm=algorithm)
    now = draw(st.floats(0.0, 1e5))
    state = None
    for cost in draw(st.lists(st.integers(-3, 5), min_size=1, max_size=6)):
        state, _ = decide(state, limit, cost, now)
        now += draw(st.floats(0.0, 2.0))
    if state is None:
        return Entry(seq, None, now)
    return Entry(seq, state, now + limit.period)


@settings(max_examples=300, deadline=None)
@given(entries(), st.binary(min_size=0, max_size=40), st.floats(-1e5, 1e5))
def test_encode_packed_writes_the_bytes_of_encode_entry(
    entry: Entry, key: bytes, now: float
) -> None:
    assert encode_packed(key, pack(entry), now) == encode_entry(key, entry, now)


@settings(max_examples=300, deadline=None)
@given(entries(), st.binary(min_size=0, max_size=40), st.floats(-1e5, 1e5), st.floats(0, 1e5))
def test_decode_packed_reads_what_decode_entry_reads(
    entry: Entry, key: bytes, sent_at: float, now: float
) -> None:
    record = encode_entry(key, entry, sent_at)
    rkey, want = decode_entry(record, now)
    assert decode_packed(record, now) == (rkey, pack(want))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=120), st.floats(0, 1e5))
def test_decode_packed_fails_exactly_where_decode_entry_fails(data: bytes, now: float) -> None:
    """On arbitrary bytes: the same value, or the same typed error (nothing else)."""
    want: object = CorruptStateError
    with contextlib.suppress(CorruptStateError):
        rkey, entry = decode_entry(data, now)
        want = (rkey, pack(entry))
    got: object = CorruptStateError
    with contextlib.suppress(CorruptStateError):
        got = decode_packed(data, now)
    assert got == want


def test_non_finite_fields_go_to_the_general_decoder_and_fail_there() -> None:
    entry = Entry(3, None, 10.0)
    fixed, _ = decide(None, Limit(5, 1.0, algorithm=Algorithm.FIXED_WINDOW), 1, 0.0)
    assert fixed is not None
    record = bytearray(encode_entry(b"k", Entry(3, fixed, 10.0), 0.0))
    record[-16:-8] = b"\x7f\xf0" + b"\x00" * 6  # the window's start: +inf
    try:
        decode_packed(bytes(record), 0.0)
    except CorruptStateError:
        pass
    else:
        raise AssertionError("a non-finite window start was accepted")
    assert decode_packed(encode_entry(b"k", entry, 0.0), 0.0) == (b"k", pack(entry))


def test_merge_packed_keeps_the_higher_seq_like_merge() -> None:
    now = [0.0]
    store = StateStore(lambda: now[0], lambda _k: 0, retain=30.0)
    limit = Limit(5, 10.0, algorithm=Algorithm.FIXED_WINDOW)
    s1, _ = decide(None, limit, 1, 0.0)
    s2, _ = decide(s1, limit, 1, 0.0)
    assert store.merge_packed(b"k", pack(Entry(2, s2, 10.0)), 0)
    assert not store.merge_packed(b"k", pack(Entry(1, s1, 10.0)), 0)  # older: kept out
    assert store.get(b"k") == Entry(2, s2, 10.0)
    now[0] = 11.0  # the stored entry expired: any record replaces it
    assert store.merge_packed(b"k", pack(Entry(1, s1, 20.0)), 0)
    assert store.get_packed(b"k", 0) == pack(Entry(1, s1, 20.0))
    assert store.get_packed(b"other", 0) is None and store.get_packed(b"k", 5) is None
