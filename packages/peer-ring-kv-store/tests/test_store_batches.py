"""mget/mset on the core's execute_many: sloppy quorum and hints with a replica down, per-key
quorum errors, read repair of batched reads. In-memory network, fake clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from peer_ring.core import PeerRingConfig, QuorumNotReachedError
from peer_ring.core.testing import FakeClock, FixedDiscovery, MemoryNetwork, settle_loop
from peer_ring.kv import KVStore

PEERS = [f"127.0.0.{i}:7101" for i in range(1, 5)]
CONFIG = PeerRingConfig(
    partitions=32,
    request_timeout=1.0,
    probe_interval=0.5,
    probe_timeout=0.5,
    suspicion_timeout=2.0,
    down_after=None,
    anti_entropy_interval=None,
)


class Cluster:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.network = MemoryNetwork(self.clock)
        self.stores: dict[str, KVStore] = {}

    async def start_all(self) -> list[KVStore]:
        for address in PEERS:
            store = KVStore(
                FixedDiscovery(address, PEERS),
                replication=3,
                quorum=2,
                config=CONFIG,
                transport=self.network.transport(address),
                clock=self.clock,
            )
            await store.start()
            self.stores[address] = store
        await self.until(lambda: all(s.ready for s in self.stores.values()))
        return list(self.stores.values())

    def isolate(self, address: str) -> None:
        for other in PEERS:
            if other != address:
                self.network.cut(address, other)

    async def until(self, predicate: Callable[[], bool], within: float = 60.0) -> None:
        waited = 0.0
        while True:
            await settle_loop(60)
            if predicate():
                return
            assert waited < within, f"condition not met within {within}s of fake time"
            await self.clock.advance_async(0.1, settle=60)
            waited += 0.1


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = Cluster()
    yield c
    for store in c.stores.values():
        await store.stop()


def hints_for(cluster: Cluster, target: str) -> int:
    return sum(
        s.node.sync_status()["hints"]["pending"].get(target, 0)
        for a, s in cluster.stores.items()
        if a != target
    )


async def test_mset_and_mget_at_n3_w2_survive_one_replica_down_and_hints_catch_it_up(
    cluster: Cluster,
) -> None:
    a, down_store, _, _ = await cluster.start_all()
    down = down_store.node.address
    data = {f"key-{i}": f"value-{i}".encode() for i in range(60)}
    on_down = [k for k in data if down in a.node.preference_list(k, 3)]
    assert on_down
    cluster.isolate(down)
    await a.mset(data)  # N=3, W=2: the down replica's writes go to substitutes as hints
    assert hints_for(cluster, down) == len(on_down)
    assert all(down_store.engine.get(k.encode()) is None for k in on_down)
    assert await a.mget([*data, "missing"]) == data  # R=2 without the down replica
    cluster.network.heal()
    await cluster.until(lambda: hints_for(cluster, down) == 0)
    for k in on_down:
        record = down_store.engine.get(k.encode())
        assert record is not None and record.value == data[k]


async def test_mget_and_mset_raise_when_a_key_cannot_reach_its_quorum(cluster: Cluster) -> None:
    a, *others = await cluster.start_all()
    await a.mset({"k1": b"v1", "k2": b"v2"})
    for other in others:  # a alone: no key can get two answers
        cluster.network.cut(a.node.address, other.node.address)
    with pytest.raises(QuorumNotReachedError):
        await a.mget(["k1", "k2"])
    with pytest.raises(QuorumNotReachedError):
        await a.mset({"k3": b"v3"}, quorum=3)


async def test_mget_repairs_a_stale_replica(cluster: Cluster) -> None:
    a, *_ = await cluster.start_all()
    await a.mset({"k": b"v", "other": b"w"}, quorum=3)
    replicas = a.node.preference_list("k", 3)
    stale = cluster.stores[next(r for r in replicas if r != a.node.address)]
    hooks = stale.node.hooks("kv")
    assert hooks is not None
    hooks.drop_partition(a.node.partition_for_key("k"))  # this replica lost its copy
    assert stale.engine.get(b"k") is None
    before = a.read_repairs
    assert await a.mget(["k"], quorum=3) == {"k": b"v"}
    await settle_loop(60)
    record = stale.engine.get(b"k")
    assert record is not None and record.value == b"v"
    assert a.read_repairs == before + 1
