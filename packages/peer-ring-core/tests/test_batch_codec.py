"""The internal batch frame of execute_many (pure encoding)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peer_ring.core import InvalidArgumentError
from peer_ring.core._batch import (
    BatchItem,
    decode_items,
    decode_results,
    encode_items,
    encode_results,
    item_size,
)
from peer_ring.core._types import Response, Status

items_strategy = st.lists(
    st.builds(
        BatchItem,
        st.binary(max_size=40),
        st.binary(max_size=200),
        st.integers(0, 2**32 - 1),
        st.sampled_from(["", "127.0.0.1:7101", "10.1.2.3:9"]),
    ),
    max_size=30,
)


@given(st.text(min_size=1, max_size=20), items_strategy)
def test_items_round_trip(namespace: str, items: list[BatchItem]) -> None:
    data = encode_items(namespace, items)
    assert decode_items(data) == (namespace, items)
    header = 2 + len(namespace.encode()) + 4
    assert len(data) == header + sum(item_size(i.key, i.payload, i.hint) for i in items)


def test_malformed_requests_are_refused_with_a_typed_error() -> None:
    data = encode_items("kv", [BatchItem(b"k", b"v", 3, ""), BatchItem(b"k2", b"", 4, "h:1")])
    for bad in (data[:-1], data + b"x", data[:3], b"", data[:6] + b"\xff\xff\xff\xff"):
        with pytest.raises(InvalidArgumentError):
            decode_items(bad)


def test_results_round_trip_and_count_check() -> None:
    responses = [
        Response(Status.OK, b"payload", ""),
        Response(Status.UNAVAILABLE, b"", "partition 3 is not ready"),
        Response(Status.OK, b"", ""),
    ]
    data = encode_results(responses)
    assert decode_results(data, 3) == responses
    with pytest.raises(InvalidArgumentError, match="expected 2"):
        decode_results(data, 2)
    with pytest.raises(InvalidArgumentError):
        decode_results(data[:-1], 3)
