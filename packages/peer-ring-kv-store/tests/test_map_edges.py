"""Named maps: every call goes to the map's own key space; keys the map cannot prefix are
refused by the store with its usual errors (single node on the in-memory network)."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import pytest

from peer_ring.core import InvalidArgumentError, PeerRingConfig
from peer_ring.core.testing import FakeClock
from peer_ring.kv import KVStore
from peer_ring.kv._errors import InvalidKeyError

A = "127.0.0.1:7801"


@pytest.fixture
async def kv(start_stores: Callable[..., Awaitable[list[KVStore]]]) -> KVStore:
    (store,) = await start_stores(
        [A], config=PeerRingConfig(partitions=8, request_timeout=1.0), ready_within=5, replication=1
    )
    return store


async def test_bytes_and_str_keys_live_under_the_maps_prefix(kv: KVStore) -> None:
    m = kv.map("m")
    assert m.name == "m"
    await m.set(b"k", b"raw")
    await m.set("s", "text")
    assert await kv.get(b"m\x00k") == b"raw"
    assert await kv.get("m\x00s") == "text"
    assert await m.get(b"k") == b"raw" and await m.get("k") == b"raw"
    assert await kv.get("k") is None and await kv.get("s") is None
    # documented: a plain key that starts with "<name> NUL" is seen by the map
    await kv.set("m\x00plain", 1)
    assert await m.get("plain") == 1


async def test_keys_the_map_cannot_prefix_are_refused_like_the_stores(kv: KVStore) -> None:
    m = kv.map("m")
    for bad in ("", b""):
        with pytest.raises(InvalidKeyError):
            await m.set(bad, 1)
        with pytest.raises(InvalidKeyError):
            await kv.set(bad, 1)
    with pytest.raises(InvalidKeyError):
        await m.get(7)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="non-empty str"):
        kv.map(b"m")  # type: ignore[arg-type]


async def test_every_call_of_a_map_acts_on_the_map_only(kv: KVStore, clock: FakeClock) -> None:
    m, other = kv.map("m"), kv.map("other")
    await other.set("k", "theirs")
    await m.set("k", "mine", ttl=30)
    assert await m.ttl("k") == pytest.approx(30)
    assert await other.ttl("k") == math.inf
    assert await m.expire("k", None)
    assert await m.ttl("k") == math.inf
    assert await m.touch("k", 5)
    assert await m.ttl("k") == pytest.approx(5)
    assert not await m.expire("absent", 5)
    assert await m.set_if_absent("new", 1) and not await m.set_if_absent("new", 2)
    got = await m.get_versioned("new")
    assert got is not None and got[0] == 1
    assert await m.compare_and_set("new", 3, version=got[1])
    assert not await m.compare_and_set("new", 4, version=got[1])
    assert await m.get("new") == 3
    assert await m.incr("n", 5) == 5 and await m.decr("n", 2) == 3
    assert await other.get("n") is None
    await m.delete("k")
    assert await m.get("k") is None and await other.get("k") == "theirs"
    assert await m.get_versioned("k") is None
    assert sorted([k async for k in m.scan("n")]) == ["n", "new"]
