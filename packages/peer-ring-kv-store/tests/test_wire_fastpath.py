"""The record decoder's fast path accepts and refuses exactly what the strict checks do.

``_read_record`` tests every condition at once and only a malformed record takes the
slow path that names the failed check. A reference decoder here runs the checks one by
one in the documented order; any payload, valid or mangled, must give the same record or
the same :class:`MalformedPayloadError` message from both.
"""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer_ring.kv import _wire
from peer_ring.kv._record import Record
from peer_ring.kv._versions import Version
from peer_ring.kv._wire import (
    MalformedPayloadError,
    decode_entries,
    decode_get_response,
    decode_record,
    encode_entries,
    encode_get_response,
    encode_record,
)

HEAD = struct.Struct("<BQIdBI")


def reference_record(data: bytes, pos: int, what: str) -> tuple[Record, int]:
    """The strict decoder, one check after the other (the order errors are reported in)."""

    def fail(detail: str) -> MalformedPayloadError:
        return MalformedPayloadError(f"malformed {what}: {detail}")

    head_end = pos + HEAD.size
    if head_end > len(data):
        raise fail(f"truncated record header at byte {pos} (payload is {len(data)} bytes)")
    flags, physical, logical, expires, node_len, value_len = HEAD.unpack_from(data, pos)
    node_end = head_end + node_len
    end = node_end + value_len
    if end > len(data):
        raise fail(
            f"record with a {node_len}-byte node id and a {value_len}-byte value "
            f"overruns the {len(data)}-byte payload"
        )
    if flags & ~0x03:
        raise fail(f"unknown record flags 0x{flags:02x}")
    if not 0.0 <= expires < math.inf:
        raise fail(f"record expiry {expires!r} is not a finite time >= 0")
    try:
        node_id = data[head_end:node_end].decode()
    except UnicodeDecodeError:
        raise fail("node id is not valid UTF-8") from None
    tombstone = bool(flags & 0x01)
    if tombstone and (value_len or flags & 0x02):
        raise fail("a tombstone carries a value or the encoded flag")
    record = Record(data[node_end:end], Version(physical, logical, node_id), expires, tombstone)
    return record._replace(encoded=bool(flags & 0x02)), end


def reference_decode_record(data: bytes) -> Record:
    record, pos = reference_record(data, 0, "record")
    if pos != len(data):
        raise MalformedPayloadError(
            f"malformed record: {len(data) - pos} unexpected trailing bytes"
        )
    return record


def outcome(decode: object, data: bytes) -> object:
    try:
        return decode(data)  # type: ignore[operator]
    except MalformedPayloadError as exc:
        return ("error", str(exc))


records = st.builds(
    lambda value, physical, logical, node, expires, kind: (
        Record.deleted(Version(physical, logical, node))
        if kind == "tomb"
        else Record(value, Version(physical, logical, node), expires, False, kind == "encoded")
    ),
    st.binary(max_size=20),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**32 - 1),
    st.text(min_size=1, max_size=8),
    st.sampled_from([0.0, 1.5, 1e9]),
    st.sampled_from(["raw", "encoded", "tomb"]),
)
# Byte edits: (position, new byte), applied modulo the payload's length.
edits = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3)


def mangle(data: bytes, changes: list[tuple[int, int]], cut: int, extra: bytes) -> bytes:
    out = bytearray(data)
    for at, byte in changes:
        out[at % len(out)] = byte
    return bytes(out[: len(out) - cut]) + extra


@settings(max_examples=400, deadline=None)
@given(records, edits, st.integers(0, 3), st.sampled_from([b"", b"\x00", b"\xff\xfe"]))
def test_any_record_payload_decodes_like_the_strict_decoder(
    record: Record, changes: list[tuple[int, int]], cut: int, extra: bytes
) -> None:
    data = mangle(encode_record(record), changes, cut, extra)
    assert outcome(decode_record, data) == outcome(reference_decode_record, data)
    if not changes and not cut and not extra:
        assert decode_record(data) == record


def test_each_malformed_field_gets_its_own_error() -> None:
    good = encode_record(Record(b"v", Version(1, 2, "n1")))
    tomb = encode_record(Record.deleted(Version(1, 2, "n1")))
    nan = HEAD.pack(0, 1, 2, math.nan, 2, 1) + b"n1v"
    cases = {
        good[:10]: "truncated record header",
        good[:-1]: "overruns",
        bytes([0x04]) + good[1:]: "unknown record flags 0x04",
        nan: "record expiry nan",
        HEAD.pack(0, 1, 2, 0.0, 2, 1) + b"\xff\xfev": "not valid UTF-8",
        HEAD.pack(1, 1, 2, 0.0, 2, 1) + b"n1v": "tombstone carries a value",
        bytes([0x03]) + tomb[1:]: "tombstone carries a value or the encoded flag",
        # Several faults at once: the first in the documented order is reported.
        HEAD.pack(0x05, 1, 2, math.inf, 2, 0) + b"\xff\xfe": "unknown record flags 0x05",
        HEAD.pack(0x01, 1, 2, -1.0, 2, 1) + b"\xff\xfev": "record expiry -1.0",
        HEAD.pack(0x01, 1, 2, 0.0, 2, 1) + b"\xff\xfev": "not valid UTF-8",
        good + b"x": "1 unexpected trailing bytes",
    }
    for data, message in cases.items():
        with pytest.raises(MalformedPayloadError, match=message):
            decode_record(data)
        assert outcome(decode_record, data) == outcome(reference_decode_record, data)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.none(), records), edits, st.integers(0, 2))
def test_get_answers_decode_like_the_strict_decoder(
    record: Record | None, changes: list[tuple[int, int]], cut: int
) -> None:
    data = mangle(encode_get_response(record), changes, cut, b"")

    def reference(payload: bytes) -> Record | None:
        what = "GET response"
        if not payload:
            raise MalformedPayloadError(f"malformed {what}: truncated presence byte at byte 0")
        if payload[0] == 0:
            found, pos = None, 1
        elif payload[0] == 1:
            found, pos = reference_record(payload, 1, what)
        else:
            raise MalformedPayloadError(
                f"malformed {what}: presence byte must be 0 or 1, got {payload[0]}"
            )
        if pos != len(payload):
            raise MalformedPayloadError(
                f"malformed {what}: {len(payload) - pos} unexpected trailing bytes"
            )
        return found

    assert outcome(decode_get_response, data) == outcome(reference, data)


@given(st.lists(st.tuples(st.binary(min_size=1, max_size=5), records), max_size=4))
def test_entry_lists_round_trip(entries: list[tuple[bytes, Record]]) -> None:
    assert decode_entries(encode_entries(entries)) == entries


def test_writer_ids_are_shared_and_the_cache_stays_bounded() -> None:
    first = decode_record(encode_record(Record(b"a", Version(1, 0, "10.0.0.7:7000"))))
    second = decode_record(encode_record(Record(b"b", Version(2, 0, "10.0.0.7:7000"))))
    assert first.version.node_id is second.version.node_id  # decoded once, then shared
    for i in range(_wire.NODE_ID_CACHE_SIZE * 2 + 5):
        decode_record(encode_record(Record(b"", Version(1, 0, f"writer-{i}"))))
        assert len(_wire._node_ids) <= _wire.NODE_ID_CACHE_SIZE
    again = decode_record(encode_record(Record(b"c", Version(3, 0, "10.0.0.7:7000"))))
    assert again.version.node_id == "10.0.0.7:7000"
