"""Version encoding at its limits and its error messages (tools/mutation, docs/testing.md)."""

from __future__ import annotations

import pytest

from peer_ring.kv._versions import (
    MAX_LOGICAL,
    MAX_NODE_ID_BYTES,
    MAX_PHYSICAL,
    VERSION_HEAD,
    ZERO_VERSION,
    Version,
)
from peer_ring.kv._wire import MalformedPayloadError


def test_wall_time_is_the_physical_part_in_seconds() -> None:
    assert Version(1_500_000, 0, "n").wall_time == 1.5


def test_the_largest_fields_round_trip_and_one_more_is_refused() -> None:
    top = Version(MAX_PHYSICAL, MAX_LOGICAL, "x" * MAX_NODE_ID_BYTES)
    assert Version.from_bytes(top.to_bytes()) == top
    assert len(top.to_bytes()) == 13 + MAX_NODE_ID_BYTES
    with pytest.raises(ValueError, match="256 bytes; at most 255"):
        Version(0, 0, "x" * (MAX_NODE_ID_BYTES + 1)).to_bytes()
    for bad in (
        Version(MAX_PHYSICAL + 1, 0, "n"),
        Version(0, MAX_LOGICAL + 1, "n"),
        Version(-1, 0, "n"),
        Version(0, -1, "n"),
    ):
        with pytest.raises(ValueError, match="version out of range"):
            bad.to_bytes()


def test_the_smallest_fields_round_trip() -> None:
    assert Version.from_bytes(ZERO_VERSION.to_bytes()) == ZERO_VERSION == Version(0, 0, "")
    assert ZERO_VERSION.to_bytes() == bytes(13)


def test_the_encoding_is_little_endian_head_then_node_id() -> None:
    data = Version(0x0102030405060708, 0x0A0B0C0D, "né").to_bytes()
    assert data == bytes.fromhex("08070605040302010d0c0b0a03") + "né".encode()
    assert VERSION_HEAD.size == 13


def test_decoding_errors_say_what_is_wrong() -> None:
    with pytest.raises(MalformedPayloadError, match="version: need 13 bytes, got 12"):
        Version.from_bytes(bytes(12))
    good = Version(1, 2, "abc").to_bytes()
    with pytest.raises(
        MalformedPayloadError, match="version: node id length 3 does not match 2 bytes"
    ):
        Version.from_bytes(good[:-1])
    with pytest.raises(
        MalformedPayloadError, match="version: node id length 3 does not match 4 bytes"
    ):
        Version.from_bytes(good + b"!")
    with pytest.raises(MalformedPayloadError, match="version: node id is not UTF-8"):
        Version.from_bytes(Version(1, 2, "ab").to_bytes()[:-2] + b"\xff\xfe")
