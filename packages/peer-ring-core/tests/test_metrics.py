"""Core Prometheus metrics (peer_ring.core.metrics): read from a live node at scrape time,
on the in-memory network (ring, hints, quorum failures, handoffs) and over real gRPC (per-peer
in-flight and latency, transport counters)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from peer_ring.core import (
    DIGEST_BUCKETS,
    Command,
    CommandContext,
    PeerRing,
    PeerRingConfig,
    QuorumNotReachedError,
    bucket_for_key,
    partition_for_key,
)
from peer_ring.core.metrics import PeerRingCollector, register_metrics
from peer_ring.core.testing import FixedDiscovery, free_port

P = 32
ADDRS = [f"127.0.0.{i}:7101" for i in range(1, 5)]
PUT = Command("put", mutates=True)
UNSAFE = Command("unsafe", mutates=True, hinted=False)


class Store:
    """A dict with data hooks (records: 2-byte key length, key, value)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def put(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        self.data[key] = payload
        return b""

    def export_partition(
        self, partition: int, buckets: Collection[int] | None = None
    ) -> Iterable[bytes]:
        for key, value in list(self.data.items()):
            if partition_for_key(key, P) == partition:
                yield len(key).to_bytes(2, "big") + key + value

    def apply_records(self, partition: int, records: Sequence[bytes]) -> None:
        for record in records:
            size = int.from_bytes(record[:2], "big")
            self.data.setdefault(record[2 : 2 + size], record[2 + size :])

    def drop_partition(self, partition: int) -> None:
        for key in [k for k in self.data if partition_for_key(k, P) == partition]:
            del self.data[key]

    def digest_partition(self, partition: int) -> Sequence[bytes]:
        digests = [b""] * DIGEST_BUCKETS
        for key in self.data:
            if partition_for_key(key, P) == partition:
                digests[bucket_for_key(key)] = b"x"
        return digests


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, keyed by (name, sorted labels)."""
    text = generate_latest(registry).decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


#: ``app_cluster(...)``: an ``AppCluster`` of conftest.py.
Cluster = Any
#: ``memory_config(partitions, replication)`` of conftest.py.
ConfigFactory = Callable[[int, int], PeerRingConfig]
#: The commands of every node, handled by its ``Store``.
HANDLERS = {PUT: Store.put, UNSAFE: Store.put}


@pytest.fixture
def cluster(app_cluster: Callable[..., Cluster], memory_config: ConfigFactory) -> Cluster:
    """Nodes on one in-memory network, each with a ``Store`` (also its data hooks)."""
    return app_cluster(memory_config(P, 3), lambda node: Store(), HANDLERS, hooks=True)


async def test_ring_and_partition_figures_match_the_node(cluster: Cluster) -> None:
    nodes = await cluster.start_ready(ADDRS[:3])
    a = nodes[0]
    m = scrape(register_metrics(a))
    assert m[("peer_ring_node_ready", ())] == 1.0
    assert m[("peer_ring_members", ())] == 3.0
    assert m[("peer_ring_partitions", ())] == float(P)
    assert m[("peer_ring_owned_partitions", ())] == float(len(a.ring.partitions_of(a.address, 1)))
    # N=3 on 3 nodes: every node replicates every partition
    assert m[("peer_ring_replica_partitions", ())] == float(P)
    assert m[("peer_ring_partitions_replicated", ())] == float(P)
    assert m[("peer_ring_partitions_pending", ())] == 0.0
    for address in ADDRS[:3]:
        assert m[("peer_ring_member_up", (("peer", address), ("zone", "")))] == 1.0
    assert m[("peer_ring_suspected_peers", ())] == 0.0
    assert not [k for k in m if k[0] == "peer_ring_quorum_failures_total"]  # none yet
    info = [k for k in m if k[0] == "peer_ring_node_info"]
    assert info and dict(info[0][1])["address"] == a.address


async def test_hints_pending_per_target_and_quorum_failures(cluster: Cluster) -> None:
    nodes = await cluster.start_ready(ADDRS)
    a = nodes[0]
    down = nodes[1].address
    for other in ADDRS:
        if other != down:
            cluster.network.cut(down, other)
    registry = register_metrics(a)
    keys = [f"k{i}".encode() for i in range(40)]
    hit = [k for k in keys if down in a.preference_list(k, 3)]
    assert hit
    await a.execute_many("t", PUT, [(k, b"v") for k in hit], replication=3, quorum=2)
    # each key of the cut replica is held as a hint by one substitute: the scrapes of the
    # other nodes add up to one hint per key, all for the cut node
    scrapes = [scrape(register_metrics(n)) for n in nodes if n.address != down]
    assert sum(s[("peer_ring_hints_pending", ())] for s in scrapes) == len(hit)
    assert sum(
        s.get(("peer_ring_hints_pending_by_target", (("target", down),)), 0.0) for s in scrapes
    ) == len(hit)
    assert sum(s[("peer_ring_hints_stored_total", ())] for s in scrapes) == len(hit)
    # an unhinted mutation needing all 3 replicas fails on every key of the cut node
    with pytest.raises(QuorumNotReachedError):
        await a.execute("t", UNSAFE, hit[0], b"v", replication=3, quorum=3)
    results = await a.execute_many(
        "t", UNSAFE, [(k, b"v") for k in hit[:3]], replication=3, quorum=3
    )
    assert not any(r.ok for r in results)
    # more replicas than members: refused before anything is sent, counted too
    with pytest.raises(QuorumNotReachedError):
        await a.execute("t", PUT, b"x", b"v", replication=5, quorum=5)
    m = scrape(registry)
    assert m[("peer_ring_quorum_failures_total", (("namespace", "t"),))] == 5.0
    m = scrape(registry)  # scrape again: counters do not move by themselves
    assert m[("peer_ring_quorum_failures_total", (("namespace", "t"),))] == 5.0
    # the suspected peer shows as down in member_up
    await cluster.until(lambda: down in a.membership.suspected)
    m = scrape(registry)
    assert m[("peer_ring_member_up", (("peer", down), ("zone", "")))] == 0.0
    assert m[("peer_ring_suspected_peers", ())] == 1.0


async def test_handoff_counts_records_and_bytes_moved(cluster: Cluster) -> None:
    nodes = await cluster.start_ready(ADDRS[:3])
    items = [(f"key-{i}".encode(), b"x" * 10) for i in range(60)]
    results = await nodes[0].execute_many("t", PUT, items, replication=3, quorum=3)
    assert all(r.ok for r in results)
    # a fourth node joins: it pulls its partitions from the others
    for discovery in cluster.discoveries.values():
        discovery.set_members(ADDRS)
    joiner = await cluster.start(ADDRS[3], ADDRS)
    registry = register_metrics(joiner)
    await cluster.until(lambda: joiner.ready and len(joiner.ring.members) == 4)
    m = scrape(registry)
    store = cluster.apps[joiner.address]
    assert store.data, "the joiner pulled records"
    assert m[("peer_ring_partitions_records_received_total", ())] >= len(store.data)
    assert m[("peer_ring_partitions_bytes_received_total", ())] > 0


async def test_a_broken_source_loses_only_its_own_metrics(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    node = await cluster.start(ADDRS[0], ADDRS[:1])
    await cluster.until(lambda: node.ready)

    def broken() -> dict[str, object]:
        raise RuntimeError("status exploded")

    node.sync_status = broken  # type: ignore[method-assign]
    m = scrape(register_metrics(node))
    assert m[("peer_ring_members", ())] == 1.0
    assert not [k for k in m if k[0].startswith("peer_ring_hints")]
    assert "collecting sync metrics failed" in caplog.text


def test_the_collector_works_on_the_global_registry_and_a_stopped_node(
    memory_config: ConfigFactory,
) -> None:
    node = PeerRing(FixedDiscovery(ADDRS[0], ADDRS[:1]), config=memory_config(P, 3))
    collector = PeerRingCollector(node)
    REGISTRY.register(collector)
    try:
        m = scrape(REGISTRY)
        assert m[("peer_ring_node_ready", ())] == 0.0
    finally:
        REGISTRY.unregister(collector)


async def test_real_grpc_exports_per_peer_in_flight_latency_and_transport_counters(
    app_cluster: Callable[..., Cluster],
) -> None:
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    config = PeerRingConfig(partitions=P, replication=2, quorum=2, anti_entropy_interval=None)
    cluster = app_cluster(config, lambda node: Store(), {PUT: Store.put}, memory=False)
    a, b = [await cluster.start(address, addrs) for address in addrs]
    await asyncio.gather(a.wait_ready(10), b.wait_ready(10))
    registry = register_metrics(a)
    for i in range(50):
        await a.execute("t", PUT, f"k{i}".encode(), b"v")
    m = scrape(registry)
    assert m[("peer_ring_peer_in_flight", (("peer", b.address),))] == 0.0
    assert m[("peer_ring_peer_pending", (("peer", b.address),))] == 0.0
    latency = m[("peer_ring_peer_latency_seconds", (("peer", b.address),))]
    assert 0.0 < latency < 5.0
    assert m[("peer_ring_transport_requests_sent", ())] >= 50
    assert m[("peer_ring_transport_responses_received", ())] >= 50
