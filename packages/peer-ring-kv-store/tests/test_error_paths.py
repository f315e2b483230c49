"""Error paths of the KV store on the in-memory network with a fake clock.

A read repair that cannot be delivered, and batch reads/writes with a replica that fails:
the operation still answers what its quorum allows, the failure is counted, nothing hangs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from peer_ring.core import PeerRingConfig, QuorumNotReachedError
from peer_ring.core.testing import MemoryNetwork, settle_loop
from peer_ring.kv import KVStore

PEERS = [f"127.0.0.{i}:7101" for i in range(1, 4)]
CONFIG = PeerRingConfig(partitions=128, request_timeout=1.0)


@pytest.fixture
async def cluster(start_stores: Callable[..., Awaitable[list[KVStore]]]) -> list[KVStore]:
    return await start_stores(PEERS, config=CONFIG, graceful=True)


async def test_a_read_repair_that_fails_is_counted_and_the_read_still_returns(
    cluster: list[KVStore], network: MemoryNetwork
) -> None:
    # Error path: c is stale and refuses the repair write (its engine fails). The read
    # returns the newest value anyway, the repair is counted on the coordinator, its failed
    # delivery in the node's send counters, and c keeps serving (stale until a later repair).
    a, _, c = cluster
    await a.set("k", b"old", quorum=3)
    network.cut(a.node.address, c.node.address)
    await a.set("k", b"new", quorum=2)  # c misses it
    network.heal()

    def broken_put(key: bytes, record: object, *_: object) -> bool:
        raise OSError("disk full on purpose")

    # Both write paths of a replica: the payload's bytes (put_wire) and a Record (put).
    c.engine.put = broken_put  # type: ignore[method-assign,assignment]
    c.engine.put_wire = broken_put  # type: ignore[method-assign,assignment]
    failed_before = a.node.sync_status()["send"]["failed"]
    assert await a.get("k", quorum=3) == b"new"
    await settle_loop()
    assert a.stats()["read_repairs"] >= 1
    assert a.node.sync_status()["send"]["failed"] > failed_before
    record = c.engine.get(b"k")
    assert record is not None and record.value == b"old"
    assert await c.get("k", quorum=1) in (b"old", b"new")  # c still serves


async def test_mget_and_mset_with_a_failing_replica(
    cluster: list[KVStore], network: MemoryNetwork
) -> None:
    # Error path: one replica is cut off. mset/mget at quorum 2 succeed from the other two;
    # at quorum 3 they raise QuorumNotReachedError naming the cut replica, and the nodes
    # keep serving.
    a, _, c = cluster
    network.cut(a.node.address, c.node.address)
    items = {f"k{i}": b"v%d" % i for i in range(20)}
    await a.mset(items, quorum=2)
    assert await a.mget(list(items), quorum=2) == items
    with pytest.raises(QuorumNotReachedError) as info:
        await a.mget(list(items), quorum=3)
    assert c.node.address in info.value.failures
    with pytest.raises(QuorumNotReachedError) as info:
        await a.mset({"x": b"1"}, quorum=3)
    assert c.node.address in info.value.failures
    network.heal()
    assert await a.get("k1", quorum=2) == b"v1"


async def test_mget_cancelled_while_a_replica_hangs_leaves_the_node_serving(
    cluster: list[KVStore], network: MemoryNetwork
) -> None:
    # Error path: a replica is paused (never answers) and the caller cancels its mget:
    # the cancellation propagates (nothing hangs on the paused replica), and the node's
    # next operations work.
    a, _, c = cluster
    await a.mset({"k1": b"1", "k2": b"2"}, quorum=3)
    network.pause(c.node.address)
    task = asyncio.ensure_future(a.mget(["k1", "k2"], quorum=3))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    network.resume(c.node.address)
    assert await a.mget(["k1", "k2"], quorum=2) == {"k1": b"1", "k2": b"2"}
