"""Delta transfers, pure parts: the ``delta`` payloads and the budget arithmetic."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer_ring.core._sync._delta import (
    ENTRY_OVERHEAD,
    entry_size,
    halves,
    known_versions,
    take_within,
)
from peer_ring.core._sync._wire import (
    DELTA_MORE,
    DELTA_UNSUPPORTED,
    DeltaRequest,
    decode_delta_request,
    decode_delta_response,
    encode_delta_request,
    encode_delta_response,
)

requests = st.builds(
    DeltaRequest,
    st.text(max_size=20),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.lists(st.integers(0, 63), max_size=64, unique=True).map(tuple),
    st.lists(st.tuples(st.integers(0, 2**64 - 1), st.binary(max_size=40)), max_size=30),
)


@settings(max_examples=200)
@given(requests)
def test_delta_request_round_trips(request: DeltaRequest) -> None:
    data = encode_delta_request(request)
    assert decode_delta_request(data) == request
    # the version list costs what entry_size says
    listed = sum(entry_size(v) for _, v in request.entries)
    assert (
        len(data) == 8 + 2 + len(request.namespace.encode()) + 1 + len(request.buckets) + 4 + listed
    )


@settings(max_examples=200)
@given(
    st.lists(st.binary(max_size=50), max_size=20),
    st.sampled_from([0, DELTA_MORE, DELTA_UNSUPPORTED]),
)
def test_delta_response_round_trips(records: list[bytes], flags: int) -> None:
    assert decode_delta_response(encode_delta_response(records, flags)) == (flags, records)


@settings(max_examples=200)
@given(requests, st.data())
def test_truncated_or_padded_delta_requests_are_refused(
    request: DeltaRequest, data: st.DataObject
) -> None:
    payload = encode_delta_request(request)
    cut = data.draw(st.integers(0, len(payload) - 1))
    with pytest.raises(ValueError):
        decode_delta_request(payload[:cut])
    with pytest.raises(ValueError, match="trailing"):
        decode_delta_request(payload + b"\0")


@settings(max_examples=100)
@given(st.lists(st.binary(min_size=1, max_size=9), min_size=1, max_size=20), st.data())
def test_truncated_delta_responses_are_refused(records: list[bytes], data: st.DataObject) -> None:
    payload = encode_delta_response(records, 0)
    cut = data.draw(st.integers(0, len(payload) - 1))
    with pytest.raises(ValueError):
        decode_delta_response(payload[:cut])


def test_fields_that_do_not_fit_are_refused_when_encoding() -> None:
    with pytest.raises(ValueError):
        encode_delta_request(DeltaRequest("ns", 0, 0, tuple(range(256)), []))
    with pytest.raises(ValueError, match="malformed"):
        decode_delta_request(b"\0" * 8 + b"\0\x02\xff\xfe")  # namespace not UTF-8 / short


@given(st.lists(st.binary(max_size=30), max_size=30), st.integers(0, 200))
def test_take_within_fits_the_budget_and_always_makes_progress(
    records: list[bytes], budget: int
) -> None:
    taken, more = take_within(iter(records), budget)
    assert taken == records[: len(taken)]
    assert more == (len(taken) < len(records))
    if records:
        assert taken  # at least one, even over budget
    if len(taken) > 1:
        assert sum(map(len, taken)) <= budget
    if more:
        assert sum(map(len, taken)) + len(records[len(taken)]) > budget


def test_known_versions_leaves_out_colliding_key_ids() -> None:
    # Two keys with the same 64-bit id: neither version can stand for both, so the
    # source must send both records (the key id is absent from the lookup).
    assert known_versions([(1, b"a"), (2, b"b"), (1, b"c")]) == {2: b"b"}
    assert known_versions([]) == {}


@given(st.lists(st.integers(0, 63), min_size=2, max_size=64, unique=True))
def test_halves_split_a_bucket_list_in_two_non_empty_parts(buckets: list[int]) -> None:
    first, second = halves(buckets)
    assert first and second and first + second == buckets


def test_entry_size() -> None:
    assert entry_size(b"") == ENTRY_OVERHEAD == 10
    assert entry_size(b"12345") == 15
