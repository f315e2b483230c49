"""Data movement seen from the data: KVStore clusters on the in-memory network.

Nodes join, leave, crash, restart empty, are cut off or paused, and after each step every
key must be on exactly the replicas of the current ring (checked in the engines), and
every acknowledged write must be readable with R=2. Time is a FakeClock: nothing sleeps.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Iterable

import pytest

from peer_ring.core import PeerRingConfig, QuorumNotReachedError
from peer_ring.core.testing import FakeClock, FixedDiscovery, MemoryNetwork, settle_loop
from peer_ring.kv import KVStore

ADDRS = [f"127.0.0.{i}:7101" for i in range(1, 7)]

CONFIG = PeerRingConfig(
    partitions=32,
    request_timeout=1.0,
    transfer_timeout=1.0,
    probe_interval=0.5,
    probe_timeout=0.5,
    suspicion_timeout=2.0,
    down_after=3.0,
    handoff_delay=0.5,
    handoff_timeout=5.0,
    sync_retry_initial=0.2,
    sync_retry_max=1.0,
    sync_give_up_after=20.0,
    anti_entropy_interval=None,
    leave_deadline=10.0,
)


class Cluster:
    """KV nodes on one MemoryNetwork; the test drives membership and faults."""

    def __init__(self, clock: FakeClock, network: MemoryNetwork, config: PeerRingConfig) -> None:
        self.clock = clock
        self.network = network
        self.config = config
        self.peers: list[str] = []
        self.stores: dict[str, KVStore] = {}
        self.discoveries: dict[str, FixedDiscovery] = {}

    @property
    def running(self) -> list[KVStore]:
        return [s for s in self.stores.values() if s.running]

    async def start(self, address: str) -> KVStore:
        """Start (or restart, empty) the node at ``address`` with the current peer list."""
        if address not in self.peers:
            self.peers.append(address)
        discovery = FixedDiscovery(address, self.peers)
        store = KVStore(
            discovery,
            config=self.config,
            transport=self.network.transport(address),
            clock=self.clock,
        )
        await store.start()
        self.stores[address] = store
        self.discoveries[address] = discovery
        return store

    def publish(self, peers: Iterable[str]) -> None:
        """Discovery reports a new member set to every running node."""
        self.peers = list(peers)
        for address, store in self.stores.items():
            if store.running:
                self.discoveries[address].set_members(self.peers)

    async def crash(self, address: str) -> None:
        await self.stores[address].stop()

    async def until(self, predicate: Callable[[], bool], within: float = 60.0) -> None:
        """Advance the fake clock in small steps until ``predicate()`` holds."""
        waited = 0.0
        while True:
            await settle_loop(60)
            if predicate():
                return
            if waited >= within:
                raise AssertionError(f"condition not met within {within}s of fake time")
            await self.clock.advance_async(0.1, settle=60)
            waited += 0.1

    async def run_for(self, seconds: float) -> None:
        steps = round(seconds / 0.1)
        for _ in range(steps):
            await self.clock.advance_async(0.1, settle=60)

    def all_ready(self) -> bool:
        return all(s.ready for s in self.running)

    def quiet(self) -> bool:
        """Nothing pending, held or hinted on any running node."""
        for s in self.running:
            st = s.node.sync_status()
            if not st["ready"] or st["partitions"]["pending"] or st["partitions"]["held_for_handoff"]:
                return False
            if st["hints"]["pending_total"]:
                return False
        return True

    def converged(self) -> bool:
        """Every running node has the same ring and nothing left to move."""
        rings = {tuple(s.node.ring.members) for s in self.running}
        return len(rings) == 1 and self.quiet()

    def holders(self, key: bytes) -> set[str]:
        return {a for a, s in self.stores.items() if s.running and s.engine.get_record(key)}

    def assert_replicated(self, keys: Iterable[bytes], n: int = 3) -> None:
        """Every key is on exactly the N replicas of the current ring, and only there."""
        node = self.running[0].node
        for key in keys:
            prefs = set(node.preference_list(key, n))
            assert self.holders(key) == prefs, (key, self.holders(key), prefs)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def network(clock: FakeClock) -> MemoryNetwork:
    return MemoryNetwork(clock)


@pytest.fixture
async def cluster(clock: FakeClock, network: MemoryNetwork) -> AsyncIterator[Cluster]:
    c = Cluster(clock, network, CONFIG)
    yield c
    for store in c.stores.values():
        await store.stop()


async def start_cluster(cluster: Cluster, count: int) -> list[KVStore]:
    cluster.peers = ADDRS[:count]
    stores = [await cluster.start(a) for a in ADDRS[:count]]
    await cluster.until(cluster.all_ready)
    return stores


def keys(count: int, prefix: str = "k") -> list[bytes]:
    return [f"{prefix}{i}".encode() for i in range(count)]


async def write_all(store: KVStore, items: Iterable[bytes], value: bytes = b"v") -> None:
    for key in items:
        await store.set(key, value + key, quorum=2)


# -- join / scale up ---------------------------------------------------------------------


async def test_a_joining_node_pulls_its_partitions_and_becomes_ready(cluster: Cluster) -> None:
    a, _, _ = await start_cluster(cluster, 3)
    data = keys(200)
    await write_all(a, data)
    cluster.assert_replicated(data)
    d = await cluster.start(ADDRS[3])
    assert not d.ready
    cluster.publish(ADDRS[:4])
    await cluster.until(cluster.converged)
    assert d.ready
    status = d.node.sync_status()
    assert status["partitions"]["synced"] > 0
    assert status["partitions"]["records_received"] > 0
    cluster.assert_replicated(data)
    for key in data:
        assert await d.get(key, quorum=2) == b"v" + key
