"""Versions: total order with the node id as last tie-breaker, compact strict encoding."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer_ring.kv._versions import MAX_LOGICAL, MAX_PHYSICAL, ZERO_VERSION, Version
from peer_ring.kv._wire import MalformedPayloadError

node_ids = st.text(max_size=40).filter(lambda s: len(s.encode()) <= 255)
versions = st.builds(Version, st.integers(0, MAX_PHYSICAL), st.integers(0, MAX_LOGICAL), node_ids)


def test_physical_then_logical_then_node_id() -> None:
    assert Version(2, 0, "a") > Version(1, 99, "z")
    assert Version(1, 2, "a") > Version(1, 1, "z")
    assert Version(1, 1, "b") > Version(1, 1, "a")
    assert Version(1, 1, "a") == Version(1, 1, "a")
    assert max([Version(5, 0, "n2"), Version(5, 0, "n10"), Version(5, 0, "n1")]).node_id == "n2"


@settings(deadline=None)
@given(versions, versions)
def test_order_is_total_and_matches_fields(a: Version, b: Version) -> None:
    assert (a < b) + (a == b) + (a > b) == 1
    assert (a < b) == ((a.physical, a.logical, a.node_id) < (b.physical, b.logical, b.node_id))


@settings(deadline=None)
@given(versions)
def test_round_trip(version: Version) -> None:
    data = version.to_bytes()
    assert len(data) == 13 + len(version.node_id.encode())
    assert Version.from_bytes(data) == version


def test_zero_is_below_any_real_version() -> None:
    assert ZERO_VERSION < Version(0, 0, "a") < Version(1, 0, "")


def test_wall_time_is_seconds() -> None:
    assert Version(1_700_000_000_250_000, 0, "a").wall_time == 1_700_000_000.25


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 12,  # shorter than the fixed head
        Version(1, 2, "abc").to_bytes()[:-1],  # node id truncated
        Version(1, 2, "abc").to_bytes() + b"x",  # trailing byte
        Version(1, 2, "").to_bytes()[:-1] + b"\x02\xff\xfe",  # node id not UTF-8
    ],
)
def test_decode_rejects_malformed(data: bytes) -> None:
    with pytest.raises(MalformedPayloadError, match="version"):
        Version.from_bytes(data)


@settings(deadline=None)
@given(st.binary(max_size=40))
def test_decode_random_bytes_never_leaks_other_errors(data: bytes) -> None:
    try:
        version = Version.from_bytes(data)
    except MalformedPayloadError:
        return
    assert version.to_bytes() == data


@pytest.mark.parametrize(
    "version",
    [Version(-1, 0, "a"), Version(0, MAX_LOGICAL + 1, "a"), Version(0, 0, "x" * 256)],
)
def test_encode_rejects_out_of_range(version: Version) -> None:
    with pytest.raises(ValueError):
        version.to_bytes()
