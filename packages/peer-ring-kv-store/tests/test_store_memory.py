"""KVStore clusters over the in-memory network with a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from peer_ring.core import InvalidArgumentError, PeerRingConfig, QuorumNotReachedError
from peer_ring.core.testing import FakeClock, MemoryNetwork, settle_loop
from peer_ring.kv import KVStore, ValueTooLargeError

PEERS = [f"127.0.0.{i}:7101" for i in range(1, 4)]
CONFIG = PeerRingConfig(partitions=128, request_timeout=1.0)


@pytest.fixture
async def cluster(start_stores: Callable[..., Awaitable[list[KVStore]]]) -> list[KVStore]:
    # Started nodes pull their partitions first (issue 4): start_stores waits until every
    # node is ready (no clock needed: peers that come up wake the pending pulls) and the
    # traffic settled.
    return await start_stores(PEERS, config=CONFIG, graceful=True)


async def test_set_get_delete_across_nodes(cluster: list[KVStore]) -> None:
    a, b, c = cluster
    await a.set("user:1", b"alice", quorum=2)
    assert await b.get("user:1", quorum=2) == b"alice"
    assert await c.get(b"user:1", quorum=3) == b"alice"
    await c.delete("user:1", quorum=2)
    assert await a.get("user:1", quorum=2) is None
    assert await a.get("user:1", "gone", quorum=2) == "gone"


async def test_values_round_trip(cluster: list[KVStore]) -> None:
    a, b, _ = cluster
    values: dict[str, object] = {
        "bytes": b"\x00\xffraw",
        "text": "héllo",
        "int": 42,
        "doc": {"a": [1, 2.5, None, True]},
        "empty": b"",
    }
    for k, v in values.items():
        await a.set(k, v)
    for k, v in values.items():
        got = await b.get(k)
        assert got == v
        assert type(got) is type(v)


async def test_ttl_expires_on_the_fake_clock(cluster: list[KVStore], clock: FakeClock) -> None:
    a, b, _ = cluster
    await a.set("session", b"token", ttl=30.0)
    assert await b.get("session") == b"token"
    await clock.advance_async(29.0)
    assert await b.get("session") == b"token"
    await clock.advance_async(2.0)
    assert await b.get("session") is None
    assert await a.get("session", quorum=1) is None


async def test_bad_arguments(cluster: list[KVStore]) -> None:
    a = cluster[0]
    with pytest.raises(InvalidArgumentError, match="cannot be greater"):
        await a.set("k", b"v", replication=3, quorum=4)
    with pytest.raises(InvalidArgumentError, match="ttl"):
        await a.set("k", b"v", ttl=-1)
    with pytest.raises(InvalidArgumentError, match="empty"):
        await a.set("", b"v")
    with pytest.raises(InvalidArgumentError):
        await a.get(123)  # type: ignore[arg-type]
    await a.set("k", b"v")
    assert await a.get("k") == b"v"


async def test_value_too_large(start_stores: Callable[..., Awaitable[list[KVStore]]]) -> None:
    # Only PEERS[0] runs (its discovery lists the other two, never started).
    (store,) = await start_stores(
        PEERS[:1], members=PEERS, config=CONFIG, ready=False, graceful=True, max_value_bytes=10
    )
    with pytest.raises(ValueTooLargeError) as info:
        await store.set("k", b"x" * 11, quorum=1)
    assert (info.value.size, info.value.limit) == (11, 10)


async def test_one_node_down_quorum_two_still_works(
    cluster: list[KVStore], network: MemoryNetwork
) -> None:
    a, b, c = cluster
    for i in range(50):
        await a.set(f"k{i}", f"v{i}", quorum=2)
    await c.abort()  # a crash, not a graceful leave
    for i in range(50):
        assert await b.get(f"k{i}", quorum=2) == f"v{i}"
    await b.set("after", b"1", quorum=2)
    with pytest.raises(QuorumNotReachedError) as info:
        await b.set("after", b"2", quorum=3)
    assert c.node.address in info.value.failures


async def test_read_repair_fixes_a_stale_replica(
    cluster: list[KVStore], network: MemoryNetwork
) -> None:
    a, _, c = cluster
    await a.set("k", b"old", quorum=3)
    network.cut(a.node.address, c.node.address)
    await a.set("k", b"new", quorum=2)  # c misses it
    assert c.engine.get(b"k") is not None
    assert c.engine.get(b"k").value == b"old"  # type: ignore[union-attr]
    network.heal()
    assert await a.get("k", quorum=3) == b"new"
    await settle_loop()
    record = c.engine.get(b"k")
    assert record is not None and record.value == b"new"
    assert a.stats()["read_repairs"] >= 1


async def test_delete_is_not_undone_by_a_stale_replica(
    cluster: list[KVStore], network: MemoryNetwork
) -> None:
    a, _, c = cluster
    await a.set("k", b"v", quorum=3)
    network.cut(a.node.address, c.node.address)
    await a.delete("k", quorum=2)
    network.heal()
    # c still holds the value; a quorum read that includes it must still see the delete
    assert await c.get("k", quorum=3) is None
    await settle_loop()
    record = c.engine.get(b"k")
    assert record is None or record.tombstone


async def test_last_writer_wins_for_concurrent_writers(cluster: list[KVStore]) -> None:
    a, b, _ = cluster
    await asyncio.gather(a.set("k", b"from-a"), b.set("k", b"from-b"))
    values = {await s.get("k", quorum=3) for s in cluster}
    assert len(values) == 1  # every node agrees on one winner
    (winner,) = values
    assert winner in (b"from-a", b"from-b")


async def test_mget_mset_batch_per_node(cluster: list[KVStore], network: MemoryNetwork) -> None:
    a, b, _ = cluster
    data = {f"key-{i}": f"value-{i}".encode() for i in range(100)}
    before = network.delivered
    await a.mset(data, quorum=2)
    # one message per remote replica node (2), not one per key
    await settle_loop()
    assert network.delivered - before <= 2
    before = network.delivered
    got = await b.mget([*data, "missing"], quorum=2)
    assert got == data
    await settle_loop()
    assert network.delivered - before <= 2


async def test_local_read_uses_no_network(cluster: list[KVStore], network: MemoryNetwork) -> None:
    a = cluster[0]
    await a.set("k", b"v", quorum=3)
    await settle_loop()
    before = network.delivered
    assert await a.get("k", quorum=1) == b"v"
    assert network.delivered == before


async def test_eviction_bound(start_stores: Callable[..., Awaitable[list[KVStore]]]) -> None:
    (store,) = await start_stores(
        [PEERS[0]], config=CONFIG, ready=False, graceful=True, max_bytes=20_000
    )
    for i in range(1000):
        await store.set(f"k{i}", b"x" * 100, quorum=1, replication=1)
    stats = store.stats()
    assert stats["size_bytes"] <= 20_000
    assert stats["evictions"] > 0
