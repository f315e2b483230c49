"""Scan cursors, bytes scans, counters on odd values and argument checks (one node, in memory).

Each test drives a branch the rest of the suite did not reach, and asserts what the caller
sees: the keys listed, the cursor that resumes, the typed error and its message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from peer_ring.core import InvalidArgumentError, PeerRingConfig
from peer_ring.core.testing import FixedDiscovery
from peer_ring.kv import KVStore

A = "127.0.0.1:7802"
PARTITIONS = 8


@pytest.fixture
async def kv(start_stores: Callable[..., Awaitable[list[KVStore]]]) -> KVStore:
    (store,) = await start_stores(
        [A],
        config=PeerRingConfig(partitions=PARTITIONS, request_timeout=1.0),
        ready_within=5,
        replication=1,
    )
    return store


async def test_a_bytes_scan_yields_every_key_a_text_scan_skips_non_utf8(kv: KVStore) -> None:
    await kv.set(b"k\xff\xfe", b"1")
    await kv.set(b"k-text", b"2")
    assert sorted([k async for k in kv.scan(b"k")]) == [b"k-text", b"k\xff\xfe"]
    assert [k async for k in kv.scan("k")] == ["k-text"]


async def test_scan_pages_resume_from_their_cursor_and_end_with_none(kv: KVStore) -> None:
    keys = {f"key{i:02d}".encode() for i in range(25)}
    for k in keys:
        await kv.set(k, b"v")
    seen: list[bytes] = []
    cursor: str | None = None
    pages = 0
    while True:
        page, cursor = await kv.scan_page(b"key", cursor, 4)
        assert len(page) <= 4
        seen.extend(page)
        pages += 1
        if cursor is None:
            break
        assert pages < 50
    assert sorted(seen) == sorted(keys) and len(seen) == len(keys)
    # a cursor at the last partition boundary is the end
    assert await kv.scan_page(b"key", f"{PARTITIONS}:", 4) == ([], None)


@pytest.mark.parametrize("cursor", ["x:", "3:zz", f"{PARTITIONS + 1}:", "-1:"])
async def test_a_bad_cursor_is_refused(kv: KVStore, cursor: str) -> None:
    with pytest.raises(InvalidArgumentError, match="not a scan cursor"):
        await kv.scan_page(b"", cursor, 10)


@pytest.mark.parametrize("count", [0, 10_001, True, 2.0])
async def test_a_bad_page_size_is_refused(kv: KVStore, count: object) -> None:
    with pytest.raises(InvalidArgumentError, match="count must be an integer from 1 to 10000"):
        await kv.scan_page(b"", None, count)  # type: ignore[arg-type]


async def test_counters_refuse_non_integers_and_bad_deltas(kv: KVStore) -> None:
    await kv.set("text", "12")  # a str, not bytes: not a counter
    await kv.set("flag", True)
    await kv.set("utf", b"\xff1")
    await kv.set("digits", b"41")
    for key in ("text", "flag", "utf"):
        with pytest.raises(InvalidArgumentError, match="the value is not an integer"):
            await kv.incr(key)
    assert await kv.incr("digits") == 42
    for bad in (True, 1.5, "1"):
        with pytest.raises(InvalidArgumentError, match="delta must be an int"):
            await kv.decr("digits", bad)  # type: ignore[arg-type]
    assert await kv.decr("digits", 2) == 40


async def test_compare_and_set_needs_a_version_from_get_versioned(kv: KVStore) -> None:
    with pytest.raises(InvalidArgumentError, match="version must be a Version"):
        await kv.compare_and_set("k", 1, version=(1, 2, "n"))  # type: ignore[arg-type]
    assert await kv.compare_and_set("k", 1, version=None)
    assert not await kv.compare_and_set("k", 2, version=None)


def test_max_value_bytes_must_be_positive() -> None:
    with pytest.raises(InvalidArgumentError, match="max_value_bytes must be >= 1, got 0"):
        KVStore(FixedDiscovery(A, [A]), max_value_bytes=0)
