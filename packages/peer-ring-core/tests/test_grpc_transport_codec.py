"""The transport's hand-written protobuf encoding agrees with the generated parser.

Pure tests (no network): the codec, frame splitting and the deadline wheel.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peer_ring.core._errors import (
    InvalidArgumentError,
    NotRunningError,
    OverloadedError,
    UnknownCommandError,
)
from peer_ring.core._types import Request, Response, Status, TransferRequest
from peer_ring.core.proto import peer_ring_pb2 as pb
from peer_ring.core.testing import FakeClock
from peer_ring.core.transport._codec import (
    RecordTooLargeError,
    cancel_parts,
    decode_transfer_chunk,
    decode_transfer_request,
    encode_transfer_request,
    error_response,
    join_frames,
    request_from_pb,
    request_part,
    response_part,
    status_of,
    timeout_ms,
    transfer_chunks,
    varint,
)
from peer_ring.core.transport._deadlines import DeadlineWheel

UINT32 = st.integers(0, 2**32 - 1)
UINT64 = st.integers(0, 2**64 - 1)
TEXT = st.text(max_size=40)


@given(
    rid=UINT64,
    namespace=TEXT,
    command=TEXT,
    key=st.binary(max_size=300),
    payload=st.binary(max_size=3000),
    partition=UINT32,
    hint=TEXT,
    timeout=st.floats(0.001, 4_000_000.0),
)
def test_request_part_is_a_frame_the_generated_parser_reads(
    rid: int,
    namespace: str,
    command: str,
    key: bytes,
    payload: bytes,
    partition: int,
    hint: str,
    timeout: float,
) -> None:
    req = Request(namespace, command, key, payload, partition, hint, timeout)
    frame = pb.Frame.FromString(request_part(rid, req, timeout))
    assert len(frame.requests) == 1
    msg = frame.requests[0]
    assert msg == pb.Request(
        id=rid,
        namespace=namespace,
        command=command,
        key=key,
        payload=payload,
        partition=partition,
        hint=hint,
        timeout_ms=timeout_ms(timeout),
    )
    back = request_from_pb(msg)
    assert (back.namespace, back.command, back.key, back.payload, back.partition, back.hint) == (
        namespace,
        command,
        key,
        payload,
        partition,
        hint,
    )
    assert back.timeout == pytest.approx(timeout_ms(timeout) / 1000)


@given(rid=UINT64, status=st.sampled_from(Status), payload=st.binary(max_size=3000), error=TEXT)
def test_response_part_is_a_frame_the_generated_parser_reads(
    rid: int, status: Status, payload: bytes, error: str
) -> None:
    frame = pb.Frame.FromString(response_part(rid, Response(status, payload, error)))
    assert list(frame.responses) == [
        pb.Response(id=rid, status=int(status), payload=payload, error=error)  # type: ignore[arg-type]
    ]


def test_response_part_refuses_bad_values() -> None:
    with pytest.raises(ValueError):
        response_part(1, Response(-1, b"", "x"))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        response_part(1, Response(Status.OK, "text", ""))  # type: ignore[arg-type]


def test_request_part_refuses_bad_values() -> None:
    with pytest.raises(ValueError):
        request_part(1, Request("n", "c", partition=2**32), 1.0)
    with pytest.raises(TypeError):
        request_part(1, Request("n", "c", key="text"), 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        request_part(1, Request("\ud800", "c"), 1.0)  # a lone surrogate is not UTF-8


@given(UINT64)
def test_varint_matches_protobuf(value: int) -> None:
    # A packed repeated uint64 with one element: key byte, length byte, the varint.
    encoded = pb.Frame(cancels=[value]).SerializeToString()
    assert encoded[2:] == varint(value)


@pytest.mark.parametrize("value", [-1, 2**64])
def test_varint_rejects_out_of_range(value: int) -> None:
    with pytest.raises(ValueError):
        varint(value)


def test_unknown_status_values_map_to_error() -> None:
    assert status_of(0) is Status.OK
    assert status_of(7) is Status.TOO_LARGE
    assert status_of(99) is Status.ERROR


def test_timeout_ms_rounds_up_and_clamps() -> None:
    assert timeout_ms(0.0001) == 1
    assert timeout_ms(1.5) == 1500
    assert timeout_ms(1e12) == 2**32 - 1


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (UnknownCommandError("u"), Status.UNKNOWN_COMMAND),
        (InvalidArgumentError("i"), Status.INVALID_ARGUMENT),
        (OverloadedError("o"), Status.OVERLOADED),
        (NotRunningError("n"), Status.UNAVAILABLE),
        (KeyError("k"), Status.ERROR),
        (RuntimeError(), Status.ERROR),
    ],
)
def test_error_response_keeps_typed_errors(error: Exception, status: Status) -> None:
    resp = error_response(error)
    assert resp.status is status
    assert resp.error  # never empty, even for an exception without a message


@given(st.lists(UINT64, max_size=300), st.integers(64, 2000))
def test_cancel_parts_round_trip_and_respect_the_size(ids: list[int], max_bytes: int) -> None:
    parts = list(cancel_parts(ids, max_bytes))
    assert all(len(p) <= max_bytes for p in parts)
    got: list[int] = []
    for part in parts:
        got.extend(pb.Frame.FromString(part).cancels)
    assert got == ids


@given(st.lists(st.binary(min_size=1, max_size=200), max_size=60), st.integers(50, 1000))
def test_join_frames_keeps_order_and_bounds(parts: list[bytes], max_bytes: int) -> None:
    frames = join_frames(parts, max_bytes)
    assert b"".join(frames) == b"".join(parts)
    for frame in frames:
        assert len(frame) <= max_bytes or any(len(p) > max_bytes for p in parts)
    assert len(frames) <= len(parts)


@given(st.lists(st.binary(max_size=500), max_size=80), st.integers(600, 5000))
def test_transfer_chunks_round_trip_within_the_size(records: list[bytes], max_bytes: int) -> None:
    chunks = transfer_chunks(records, max_bytes)
    assert all(len(c) <= max_bytes for c in chunks)
    got: list[bytes] = []
    for chunk in chunks:
        got.extend(decode_transfer_chunk(chunk))
    assert got == records


def test_transfer_record_too_large() -> None:
    with pytest.raises(RecordTooLargeError, match="max_message_bytes=100"):
        transfer_chunks([b"x" * 200], 100)


def test_transfer_request_round_trip() -> None:
    req = TransferRequest("kv", 4095, (1, 63))
    assert decode_transfer_request(encode_transfer_request(req)) == req


# -- deadline wheel -------------------------------------------------------------------------------


class Item:
    def __init__(self) -> None:
        self.expired = 0

    def expire(self) -> None:
        self.expired += 1


def test_deadlines_fire_late_never_early_and_share_timers() -> None:
    clock = FakeClock()
    wheel = DeadlineWheel(clock, resolution=0.01)
    items = [Item() for _ in range(100)]
    for item in items:
        wheel.add(item, 1.0)
    assert clock.pending_timers == 1  # one timer for the whole tick
    clock.advance(0.999)
    assert not any(i.expired for i in items)
    clock.advance(0.011)
    assert all(i.expired == 1 for i in items)


def test_removed_items_never_expire() -> None:
    clock = FakeClock()
    wheel = DeadlineWheel(clock, resolution=0.01)
    kept, removed = Item(), Item()
    wheel.add(kept, 0.5)
    tick = wheel.add(removed, 0.5)
    wheel.remove(removed, tick)
    clock.advance(1.0)
    assert (kept.expired, removed.expired) == (1, 0)


def test_close_cancels_every_timer() -> None:
    clock = FakeClock()
    wheel = DeadlineWheel(clock)
    item = Item()
    wheel.add(item, 0.5)
    wheel.add(Item(), 3.0)
    wheel.close()
    clock.advance(5.0)
    assert item.expired == 0
    assert clock.pending_timers == 0
