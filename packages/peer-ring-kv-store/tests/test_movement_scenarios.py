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
        self.sloppy_quorum = False

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
            sloppy_quorum=self.sloppy_quorum,
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
        await self.stores[address].abort()

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
            if (
                not st["ready"]
                or st["partitions"]["pending"]
                or st["partitions"]["held_for_handoff"]
            ):
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


# clock and network: the conftest fixtures.


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


async def test_five_nodes_started_at_once_form_one_ring(cluster: Cluster) -> None:
    cluster.peers = ADDRS[:5]
    stores = await asyncio.gather(*(cluster.start(a) for a in ADDRS[:5]))
    await cluster.until(cluster.converged)
    assert {tuple(s.node.ring.members) for s in stores} == {tuple(sorted(ADDRS[:5]))}
    await write_all(stores[4], keys(50))
    cluster.assert_replicated(keys(50))


async def test_scale_up_then_down_keeps_n_replicas(cluster: Cluster) -> None:
    a, _, _ = await start_cluster(cluster, 3)
    data = keys(150)
    await write_all(a, data)
    await cluster.start(ADDRS[3])
    await cluster.start(ADDRS[4])
    cluster.publish(ADDRS[:5])
    await cluster.until(cluster.converged)
    cluster.assert_replicated(data)
    moved = sum(s.node.sync_status()["partitions"]["records_received"] for s in cluster.running)
    assert moved <= 2 * len(data) * 3 * 2 // 5  # about 2/5 of the replicas moved, not all
    # scale down: the two newest leave gracefully, one at a time
    for address in (ADDRS[4], ADDRS[3]):
        report = await cluster.stores[address].leave()
        assert report.complete, report
        cluster.publish([p for p in cluster.peers if p != address])
        await cluster.until(cluster.converged)
        cluster.assert_replicated(data)
    for key in data:
        assert await a.get(key, quorum=2) == b"v" + key


# -- graceful leave ----------------------------------------------------------------------


async def test_leave_hands_off_data_that_only_the_leaver_and_one_other_hold(
    cluster: Cluster,
) -> None:
    stores = await start_cluster(cluster, 4)
    leaver = stores[3]
    data = keys(200)
    await write_all(stores[0], data)
    # Make every partition the leaver replicates exist only on the leaver and one other
    # node: the third replica forgets it (as if it had missed every write).
    ring = leaver.node.ring
    for p in ring.partitions_of(leaver.node.address, 3):
        others = [n for n in ring.preference_list(p, 3) if n != leaver.node.address]
        cluster.stores[others[-1]].engine.drop(p)
    report = await leaver.leave(deadline=10.0)
    assert report.complete, report
    assert not leaver.running
    # the peers keep it out of the ring although discovery still lists it
    await cluster.until(cluster.converged)
    for s in cluster.running:
        assert leaver.node.address not in s.node.ring
        assert s.node.sync_status()["membership"]["left"] == [leaver.node.address]
    for key in data:
        assert len(cluster.holders(key)) >= 2
        assert await stores[1].get(key, quorum=2) == b"v" + key


async def test_a_node_that_left_comes_back_when_it_starts_again(cluster: Cluster) -> None:
    stores = await start_cluster(cluster, 4)
    data = keys(100)
    await write_all(stores[0], data)
    await stores[3].leave()
    await cluster.until(cluster.converged)
    assert all(len(s.node.ring) == 3 for s in cluster.running)
    back = await cluster.start(ADDRS[3])  # a new incarnation, empty
    await cluster.until(cluster.converged)
    assert all(len(s.node.ring) == 4 for s in cluster.running)
    assert back.ready
    cluster.assert_replicated(data)


# -- failures ----------------------------------------------------------------------------


async def test_a_dead_replica_is_replaced_then_a_second_death_loses_nothing(
    cluster: Cluster,
) -> None:
    stores = await start_cluster(cluster, 5)
    data = keys(200)
    await write_all(stores[0], data)
    ring = stores[0].node.ring
    # a node that is a replica but not the owner of the first key
    victim = ring.preference_list(ring.partition_for_key(data[0]), 3)[1]
    coordinator = next(s for s in stores if s.node.address != victim)
    await cluster.crash(victim)
    await cluster.until(
        lambda: all(victim not in s.node.ring for s in cluster.running) and cluster.converged()
    )
    cluster.assert_replicated(data)  # N copies again, on the four survivors
    second = next(s for s in cluster.running if s is not coordinator)
    await cluster.crash(second.node.address)
    for key in data:  # before the second death is even detected
        assert await coordinator.get(key, quorum=2) == b"v" + key
    gone = second.node.address
    await cluster.until(
        lambda: all(gone not in s.node.ring for s in cluster.running) and cluster.converged()
    )
    cluster.assert_replicated(data)


async def test_a_restarted_empty_node_resyncs_and_never_serves_empty_reads(
    cluster: Cluster,
) -> None:
    a, _, c = await start_cluster(cluster, 3)
    data = keys(150)
    await write_all(a, data)
    address = c.node.address
    await cluster.crash(address)
    c2 = await cluster.start(address)  # same address, empty engine
    assert not c2.ready
    # reads through the restarted node itself while it pulls: it answers "not ready",
    # so the quorum comes from the others (never an empty "not found")
    for key in data[:20]:
        assert await c2.get(key, quorum=2) == b"v" + key
    await cluster.until(cluster.converged)
    assert c2.ready
    cluster.assert_replicated(data)
    assert len(c2.engine) == len(data)


async def test_sloppy_quorum_write_survives_two_cut_replicas_and_the_hint_is_delivered(
    cluster: Cluster, network: MemoryNetwork
) -> None:
    cluster.sloppy_quorum = True
    stores = await start_cluster(cluster, 5)
    coordinator = stores[0]
    me = coordinator.node.address
    key = next(k for k in keys(1000) if coordinator.node.preference_list(k, 3)[0] == me)
    _, y, z = coordinator.node.preference_list(key, 3)
    network.cut(me, y)
    network.cut(me, z)
    await coordinator.set(key, b"hinted", quorum=2)  # W=2: local + a hinted substitute
    status = coordinator.node.sync_status()
    hinted = sum(s.node.sync_status()["hints"]["pending_total"] for s in cluster.running)
    assert hinted == 2, status
    assert cluster.stores[y].engine.get_record(key) is None
    network.heal()
    await cluster.until(
        lambda: all(s.node.sync_status()["hints"]["pending_total"] == 0 for s in cluster.running)
    )
    for replica in (y, z):
        record = cluster.stores[replica].engine.get_record(key)
        assert record is not None and record.value == b"hinted"
    delivered = sum(s.node.sync_status()["hints"]["delivered"] for s in cluster.running)
    assert delivered == 2
    assert await cluster.stores[y].get(key, quorum=3) == b"hinted"


async def test_without_sloppy_quorum_a_hint_does_not_count_but_is_still_delivered(
    cluster: Cluster, network: MemoryNetwork
) -> None:
    # The default: a substitute's hint cannot refuse an older version (clock skew), so it
    # does not make the quorum; it is still stored and delivered when the replicas return.
    stores = await start_cluster(cluster, 5)
    coordinator = stores[0]
    me = coordinator.node.address
    key = next(k for k in keys(1000) if coordinator.node.preference_list(k, 3)[0] == me)
    _, y, z = coordinator.node.preference_list(key, 3)
    network.cut(me, y)
    network.cut(me, z)
    with pytest.raises(QuorumNotReachedError) as info:
        await coordinator.set(key, b"hinted", quorum=2)
    assert info.value.succeeded == [me]
    network.heal()
    await cluster.until(
        lambda: all(s.node.sync_status()["hints"]["pending_total"] == 0 for s in cluster.running)
    )
    for replica in (y, z):
        record = cluster.stores[replica].engine.get_record(key)
        assert record is not None and record.value == b"hinted"


async def test_a_paused_node_catches_up_after_being_declared_down(
    cluster: Cluster, network: MemoryNetwork
) -> None:
    a, b, c = await start_cluster(cluster, 3)
    paused = c.node.address
    network.pause(paused)
    data = keys(100)
    writes = asyncio.ensure_future(write_all(a, data))
    await cluster.until(writes.done)
    writes.result()
    await cluster.until(lambda: paused not in a.node.ring and paused not in b.node.ring)
    network.resume(paused)
    await cluster.until(lambda: cluster.converged() and paused in a.node.ring)
    await cluster.until(lambda: len(c.engine) == len(data))
    cluster.assert_replicated(data)


# -- anti-entropy ------------------------------------------------------------------------


async def test_anti_entropy_repairs_a_replica_that_missed_writes_without_resurrection(
    clock: FakeClock, network: MemoryNetwork
) -> None:
    config = PeerRingConfig(
        partitions=32,
        request_timeout=1.0,
        probe_interval=0.5,
        probe_timeout=0.5,
        down_after=None,
        anti_entropy_interval=5.0,
        handoff_delay=0.5,
    )
    cluster = Cluster(clock, network, config)
    try:
        a, b, c = await start_cluster(cluster, 3)
        old = keys(60, "old")
        await write_all(a, old)
        cut = c.node.address
        network.partition([cut], [a.node.address, b.node.address])
        fresh = keys(60, "new")
        await write_all(a, fresh)
        for key in old[:30]:
            await a.delete(key, quorum=2)
        assert all(c.engine.get_record(k) is None for k in fresh)
        network.heal()

        def engines_equal() -> bool:
            return all(
                a.engine.digests(p) == b.engine.digests(p) == c.engine.digests(p)
                for p in range(config.partitions)
            )

        assert not engines_equal()
        await cluster.until(engines_equal, within=30.0)
        assert sum(s.node.sync_status()["anti_entropy"]["partitions_repaired"] for s in (a, b, c))
        for key in fresh:
            record = c.engine.get(key)
            assert record is not None and record.value == b"v" + key
        for key in old[:30]:  # deleted while c was away: tombstones won, nothing came back
            assert c.engine.get(key) is None
            assert await c.get(key, quorum=3) is None
        for key in old[30:]:
            assert await c.get(key, quorum=3) == b"v" + key
    finally:
        for store in cluster.stores.values():
            await store.stop()


# -- the workload checker ----------------------------------------------------------------


class Checker:
    """Records every acknowledged write; checks each is readable (value or newer)."""

    def __init__(self) -> None:
        self.attempts: dict[bytes, list[bytes]] = {}
        self.acked: dict[bytes, int] = {}  # key -> index of the last acknowledged attempt
        self.ok = 0
        self.failed = 0
        self.reads = 0
        self.read_failed = 0
        self.stale: list[tuple[bytes, object, bytes]] = []

    async def write(self, store: KVStore, key: bytes) -> None:
        tries = self.attempts.setdefault(key, [])
        value = b"%s:%d" % (key, len(tries))
        tries.append(value)
        try:
            await store.set(key, value, quorum=2)
        except QuorumNotReachedError:
            self.failed += 1
            return
        self.ok += 1
        self.acked[key] = max(self.acked.get(key, -1), len(tries) - 1)

    def acceptable(self, key: bytes, value: object) -> bool:
        index = self.acked[key]
        return value in self.attempts[key][index:]

    async def read(self, store: KVStore, key: bytes) -> None:
        """An online read: it must see the last acknowledged write or a newer one."""
        if key not in self.acked:
            return
        index = self.acked[key]
        try:
            value = await store.get(key, quorum=2)
        except QuorumNotReachedError:
            self.read_failed += 1
            return
        self.reads += 1
        if value not in self.attempts[key][index:]:
            self.stale.append((key, value, self.attempts[key][index]))


@pytest.mark.parametrize("seed", [4, 11, 23, 42, 97])
async def test_workload_loses_no_acknowledged_write_through_membership_changes(
    cluster: Cluster, seed: int
) -> None:
    rng = random.Random(seed)
    await start_cluster(cluster, 3)
    checker = Checker()
    stop = asyncio.Event()
    key_space = keys(80, "w")

    async def workload() -> None:
        while not stop.is_set():
            live = cluster.running
            if not live:
                await asyncio.sleep(0)
                continue
            store, key = rng.choice(live), rng.choice(key_space)
            # Let time pass between two operations, as it does for a real client: under a
            # frozen clock, writes share one physical timestamp and last-writer-wins orders
            # them by the coordinators' HLC counters, not in the order they were issued.
            cluster.clock.advance(0.00001)
            if rng.random() < 0.5:
                await checker.write(store, key)
            else:
                await checker.read(store, key)
            await asyncio.sleep(0)

    task = asyncio.ensure_future(workload())
    try:
        await cluster.run_for(1.0)
        # one change at a time: join, join, crash + restart empty, leave, crash for good
        await cluster.start(ADDRS[3])
        cluster.publish(ADDRS[:4])
        await cluster.run_for(3.0)
        await cluster.start(ADDRS[4])
        cluster.publish(ADDRS[:5])
        await cluster.run_for(3.0)
        await cluster.crash(ADDRS[1])
        await cluster.run_for(1.0)
        await cluster.start(ADDRS[1])
        await cluster.run_for(4.0)
        await cluster.stores[ADDRS[4]].leave()
        await cluster.run_for(3.0)
        await cluster.crash(ADDRS[2])
        await cluster.run_for(6.0)
    finally:
        stop.set()
        await task
    await cluster.until(cluster.converged)
    assert checker.ok > 100, (checker.ok, checker.failed)
    assert checker.reads > 100, (checker.reads, checker.read_failed)
    assert checker.stale == [], checker.stale[:5]
    live = cluster.running
    for key, _ in checker.acked.items():
        value = await rng.choice(live).get(key, quorum=2)
        assert checker.acceptable(key, value), (key, value, checker.attempts[key])
    cluster.assert_replicated(list(checker.acked))
