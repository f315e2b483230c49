"""The batch frame's exact layout and each refusal's message (tools/mutation found them loose)."""

from __future__ import annotations

import struct

import pytest

from peer_ring.core import InvalidArgumentError
from peer_ring.core._batch import (
    ITEM_OVERHEAD,
    BatchItem,
    decode_items,
    decode_results,
    encode_items,
    encode_results,
    item_size,
)
from peer_ring.core._types import Response, Status


def test_the_request_layout_is_big_endian_and_length_prefixed() -> None:
    data = encode_items("kv", [BatchItem(b"k", b"vv", 0x01020304, "h:1")])
    assert data == (
        b"\x00\x02kv"
        + b"\x00\x00\x00\x01"
        + b"\x01\x02\x03\x04"
        + b"\x00\x00\x00\x01"
        + b"\x00\x00\x00\x02"
        + b"\x00\x03"
        + b"kvvh:1"
    )
    assert ITEM_OVERHEAD == 14 and item_size(b"k", b"vv", "h:1") == 14 + 6


def test_an_empty_batch_round_trips() -> None:
    assert decode_items(encode_items("kv", [])) == ("kv", [])


def count_header(namespace: bytes, count: int) -> bytes:
    return struct.pack(">H", len(namespace)) + namespace + struct.pack(">I", count)


def test_a_count_no_payload_can_hold_is_refused_before_reading_items() -> None:
    # Two items need at least 28 bytes of headers; 27 follow.
    with pytest.raises(InvalidArgumentError) as caught:
        decode_items(count_header(b"kv", 2) + bytes(27))
    assert str(caught.value) == "batch of 2 items does not fit its payload"
    # Exactly two empty items (28 bytes) fit.
    assert decode_items(count_header(b"kv", 2) + bytes(28)) == (
        "kv",
        [BatchItem(b"", b"", 0, ""), BatchItem(b"", b"", 0, "")],
    )


def test_an_item_longer_than_the_payload_is_truncated() -> None:
    data = encode_items("kv", [BatchItem(b"key", b"value", 1, "h")])
    with pytest.raises(InvalidArgumentError) as caught:
        decode_items(data[:-1])
    assert str(caught.value) == "truncated batch item"
    # The lengths of the three parts add up: each one short by one byte is caught.
    for cut in (1, 2, 3):
        with pytest.raises(InvalidArgumentError, match="truncated batch item"):
            decode_items(data[:-cut])


def test_malformed_and_trailing_bytes_messages() -> None:
    with pytest.raises(InvalidArgumentError, match=r"^malformed batch request: "):
        decode_items(b"\x00")
    with pytest.raises(InvalidArgumentError, match=r"^malformed batch request: "):
        decode_items(count_header(b"\xff", 0))
    data = encode_items("kv", [BatchItem(b"k", b"", 1, "")])
    with pytest.raises(InvalidArgumentError) as caught:
        decode_items(data + b"xyz")
    assert str(caught.value) == "3 trailing bytes after a batch request"


def test_the_response_layout_and_error_texts() -> None:
    data = encode_results(
        [Response(Status.OK, b"ab", "ignored"), Response(Status.TIMEOUT, b"ignored", "late")]
    )
    assert data == b"\x00\x00\x00\x02" + b"\x00\x00\x00\x00\x02ab" + b"\x04\x00\x00\x00\x04late"
    assert decode_results(data, 2) == [
        Response(Status.OK, b"ab", ""),
        Response(Status.TIMEOUT, b"", "late"),
    ]


def test_an_unknown_status_code_reads_as_error_and_bad_utf8_is_replaced() -> None:
    data = b"\x00\x00\x00\x01" + b"\x63\x00\x00\x00\x02\xffA"
    assert decode_results(data, 1) == [Response(Status.ERROR, b"", "\ufffdA")]


def test_response_refusals_say_what_is_wrong() -> None:
    data = encode_results([Response(Status.OK, b"abc", "")])
    with pytest.raises(InvalidArgumentError) as caught:
        decode_results(data, 2)
    assert str(caught.value) == "batch response has 1 items, expected 2"
    with pytest.raises(InvalidArgumentError) as caught:
        decode_results(data[:-1], 1)
    assert str(caught.value) == "truncated batch response"
    with pytest.raises(InvalidArgumentError, match=r"^malformed batch response: "):
        decode_results(data[:6], 1)
    with pytest.raises(InvalidArgumentError, match=r"^malformed batch response: "):
        decode_results(b"", 0)
