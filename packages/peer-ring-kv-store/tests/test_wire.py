"""Replica payloads: round trips, and strict decoding of anything a peer may send."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer_ring.kv import _wire as wire
from peer_ring.kv._record import Record
from peer_ring.kv._versions import MAX_LOGICAL, MAX_PHYSICAL, Version
from peer_ring.kv._wire import MalformedPayloadError

versions = st.builds(
    Version,
    st.integers(0, MAX_PHYSICAL),
    st.integers(0, MAX_LOGICAL),
    st.text(max_size=20),
)
expiries = st.one_of(st.just(0.0), st.floats(0.0, 1e12, allow_nan=False))


@st.composite
def records(draw: st.DrawFn) -> Record:
    version = draw(versions)
    expires = draw(expiries)
    if draw(st.booleans()):
        return Record(b"", version, expires, True, False)
    return Record(draw(st.binary(max_size=64)), version, expires, False, draw(st.booleans()))


keys = st.binary(max_size=32)
optional_records = st.none() | records()
entries = st.tuples(keys, records())

DECODERS: list[Callable[[bytes], object]] = [
    wire.decode_record,
    wire.decode_entry,
    wire.decode_get_response,
    wire.decode_keys,
    wire.decode_optional_records,
    wire.decode_entries,
]


@settings(deadline=None)
@given(records())
def test_record_round_trip(record: Record) -> None:
    data = wire.encode_record(record)
    assert len(data) == 26 + len(record.version.node_id.encode()) + len(record.value)
    assert wire.decode_record(data) == record


@settings(deadline=None)
@given(entries)
def test_entry_round_trip(entry: tuple[bytes, Record]) -> None:
    assert wire.decode_entry(wire.encode_entry(*entry)) == entry


@settings(deadline=None)
@given(optional_records)
def test_get_response_round_trip(record: Record | None) -> None:
    assert wire.decode_get_response(wire.encode_get_response(record)) == record


@settings(deadline=None)
@given(st.lists(keys, max_size=20))
def test_multi_get_request_round_trip(key_list: list[bytes]) -> None:
    assert wire.decode_keys(wire.encode_keys(key_list)) == key_list


@settings(deadline=None)
@given(st.lists(optional_records, max_size=10))
def test_multi_get_response_round_trip(items: list[Record | None]) -> None:
    assert wire.decode_optional_records(wire.encode_optional_records(items)) == items


@settings(deadline=None)
@given(st.lists(entries, max_size=10))
def test_multi_set_round_trip(items: list[tuple[bytes, Record]]) -> None:
    assert wire.decode_entries(wire.encode_entries(items)) == items


def test_command_aliases_share_one_format() -> None:
    record = Record.deleted(Version(5, 1, "n1"))
    assert wire.encode_delete(record) == wire.encode_set(record) == wire.encode_repair(record)
    assert wire.decode_delete(wire.encode_delete(record)) == record
    assert wire.decode_multi_get(wire.encode_multi_get([b"a"])) == [b"a"]
    assert wire.decode_multi_set(wire.encode_multi_set([(b"a", record)])) == [(b"a", record)]
    assert wire.decode_multi_get_response(wire.encode_multi_get_response([None])) == [None]


@settings(deadline=None, max_examples=300)
@given(st.binary(max_size=120))
def test_random_bytes_decode_or_raise_malformed(data: bytes) -> None:
    for decode in DECODERS:
        with contextlib.suppress(MalformedPayloadError):
            decode(data)


@settings(deadline=None, max_examples=200)
@given(
    st.lists(entries, min_size=1, max_size=4),
    st.integers(0, 10_000),
    st.integers(0, 255),
    st.sampled_from(["flip", "truncate", "extend"]),
)
def test_corrupted_payloads_decode_or_raise_malformed(
    items: list[tuple[bytes, Record]], where: int, byte: int, how: str
) -> None:
    payloads = [
        wire.encode_entries(items),
        wire.encode_optional_records([r for _, r in items]),
        wire.encode_record(items[0][1]),
    ]
    for data in payloads:
        pos = where % len(data)
        if how == "flip":
            bad = data[:pos] + bytes([byte]) + data[pos + 1 :]
        elif how == "truncate":
            bad = data[:pos]
        else:
            bad = data + bytes([byte])
        for decode in DECODERS:
            try:
                decode(bad)
            except MalformedPayloadError as exc:
                assert str(exc).startswith("malformed ")


GOOD = wire.encode_record(Record(b"val", Version(1, 2, "node"), 0.0, False, False))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated record header"),
        (GOOD[:-1], "overruns"),
        (GOOD + b"\x00", "1 unexpected trailing bytes"),
        (b"\x08" + GOOD[1:], "unknown record flags 0x08"),
        (GOOD[:13] + b"\x00\x00\x00\x00\x00\x00\xf8\x7f" + GOOD[21:], "not a finite time"),
        (GOOD[:13] + b"\x00\x00\x00\x00\x00\x00\xf0\xbf" + GOOD[21:], "not a finite time"),
        (GOOD[:26] + b"\xff\xfe\xfd\xfc" + GOOD[30:], "not valid UTF-8"),
        (GOOD[:21] + b"\xff" + GOOD[22:], "overruns"),
        (GOOD[:22] + b"\x04\x00\x00\x00" + GOOD[26:], "overruns"),
        (b"\x01" + GOOD[1:], "tombstone carries a value"),
    ],
)
def test_record_errors_say_what_is_wrong(data: bytes, message: str) -> None:
    with pytest.raises(MalformedPayloadError, match=message):
        wire.decode_record(data)


@pytest.mark.parametrize(
    ("decode", "data", "message"),
    [
        (wire.decode_keys, b"\xff\xff\xff\xff", "4294967295 items cannot fit"),
        (wire.decode_keys, b"\x01\x00\x00\x00\x05\x00\x00\x00ab", "overruns"),
        (wire.decode_keys, b"\x01\x00", "truncated length"),
        (wire.decode_get_response, b"", "truncated presence byte"),
        (wire.decode_get_response, b"\x02", "presence byte must be 0 or 1"),
        (wire.decode_get_response, b"\x00\x00", "trailing"),
        (wire.decode_entries, b"\x02\x00\x00\x00", "2 items cannot fit"),
        (wire.decode_optional_records, b"\x01\x00\x00\x00", "1 items cannot fit"),
    ],
)
def test_list_errors_say_what_is_wrong(
    decode: Callable[[bytes], object], data: bytes, message: str
) -> None:
    with pytest.raises(MalformedPayloadError, match=message):
        decode(data)


def test_malformed_payload_error_is_a_value_error() -> None:
    assert issubclass(MalformedPayloadError, ValueError)


@pytest.mark.parametrize(
    "record",
    [
        Record(b"", Version(-1, 0, "a")),
        Record(b"", Version(0, 0, "x" * 256)),
        Record(b"", Version(0, 0, "a"), float("inf")),
        Record(b"", Version(0, 0, "a"), -1.0),
        Record(b"v", Version(0, 0, "a"), 0.0, True),
    ],
)
def test_encode_refuses_what_cannot_be_decoded(record: Record) -> None:
    with pytest.raises(ValueError):
        wire.encode_record(record)
