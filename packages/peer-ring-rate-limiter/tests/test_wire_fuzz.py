"""Decoders of peer messages on arbitrary bytes: a typed error or a value, nothing else."""

from __future__ import annotations

import contextlib
import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer_ring.ratelimit import CorruptStateError, Limit, decide
from peer_ring.ratelimit._relay import decode_deliveries, decode_relay_hits, decode_states_relay
from peer_ring.ratelimit._state import decode_state
from peer_ring.ratelimit._wire import (
    Entry,
    decode_decision,
    decode_entry,
    decode_hit,
    encode_decision,
    encode_entry,
    encode_hit,
    pack_records,
    split_answer,
    unpack_records,
)


def only_typed_errors(fn: object, data: bytes) -> None:
    with contextlib.suppress(CorruptStateError):
        fn(data)  # type: ignore[operator]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_decoders_never_raise_anything_else(data: bytes) -> None:
    only_typed_errors(lambda d: decode_state(d, 0.0), data)
    only_typed_errors(lambda d: decode_entry(d, 0.0), data)
    only_typed_errors(decode_hit, data)
    only_typed_errors(decode_decision, data)
    only_typed_errors(unpack_records, data)
    only_typed_errors(decode_relay_hits, data)
    only_typed_errors(decode_states_relay, data)
    only_typed_errors(decode_deliveries, data)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 1000),
    st.sampled_from([0.5, 1.0, 60.0]),
    st.sampled_from(["token_bucket", "gcra", "fixed_window", "sliding_window_log"]),
    st.integers(-5, 5),
    st.binary(min_size=1, max_size=40),
)
def test_round_trips(n: int, period: float, algo: str, cost: int, key: bytes) -> None:
    limit = Limit(n, period, algorithm=algo)
    assert decode_hit(encode_hit(limit, cost)) == (limit, cost)
    state, d = decide(None, limit, max(cost, 1), 100.0)
    assert decode_decision(encode_decision(d)) == d
    record = encode_entry(key, Entry(7, state, 160.0), now=100.0)
    rkey, entry = decode_entry(record, now=500.0)
    assert rkey == key and entry.seq == 7 and entry.expires == 560.0
    assert unpack_records(pack_records([record, b"", record])) == [record, b"", record]
    # An owner's answer: the decision, then (for a forwarder that is a replica) the entry.
    assert split_answer(encode_decision(d) + record) == (encode_decision(d), record)
    assert split_answer(encode_decision(d)) == (encode_decision(d), b"")


@pytest.mark.parametrize(
    ("layout", "algo_id", "fields"),
    [
        (">dd", 1, (math.inf, 0.0)),  # token bucket, level
        (">dd", 1, (0.0, math.nan)),  # token bucket, last
        (">qd", 2, (3, math.inf)),  # leaky bucket
        (">dd", 3, (0.0, 0.0)),  # GCRA, interval <= 0
        (">dd", 3, (math.nan, 1.0)),  # GCRA, tat
        (">dq", 4, (-math.inf, 2)),  # fixed window
        (">dqq", 6, (math.nan, 1, 2)),  # sliding window counter
    ],
)
def test_fixed_size_states_with_bad_numbers_are_refused(
    layout: str, algo_id: int, fields: tuple[float, ...]
) -> None:
    # The fast path hands these to the general one, which names the problem.
    record = struct.pack(">BB", 1, algo_id) + struct.pack(layout, *fields)
    with pytest.raises(CorruptStateError):
        decode_state(record, 0.0)
