"""Real gRPC between in-process nodes on loopback: publish, consume, and a sequencer killed
under load (0 acknowledged publishes lost, no offset holding two messages)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from peer_ring.core import PeerRingConfig
from peer_ring.core.testing import FixedDiscovery, free_port
from peer_ring.core.transport import TransportLimits
from peer_ring.pubsub import PartitionUnavailableError, PublishError, PubSub
from peer_ring.pubsub._wire import ring_key

CONFIG = PeerRingConfig(
    partitions=64,
    replication=3,
    quorum=2,
    request_timeout=1.0,
    probe_interval=0.2,
    probe_timeout=0.3,
    suspicion_timeout=0.5,
    down_after=None,
    anti_entropy_interval=None,
    transport_limits=TransportLimits(connect_timeout=0.5, backoff_max=0.2),
)
PARTITIONS = 4


async def eventually(predicate: Callable[[], bool], within: float = 30.0) -> None:
    """Poll a condition of real nodes (there is no event to wait for), bounded in time."""
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


class GrpcCluster:
    def __init__(self, count: int) -> None:
        self.addresses = [f"127.0.0.1:{free_port()}" for _ in range(count)]
        self.members = list(self.addresses)
        self.nodes: dict[str, PubSub] = {}
        self.discoveries: dict[str, FixedDiscovery] = {}

    async def start(self, address: str) -> PubSub:
        discovery = FixedDiscovery(address, self.members)
        ps = PubSub(discovery, replication=3, quorum=2, config=CONFIG, timeout=15.0)
        self.discoveries[address] = discovery
        self.nodes[address] = ps
        await ps.start()
        return ps

    def set_members(self, members: list[str]) -> None:
        self.members = list(members)
        for address in self.nodes:
            self.discoveries[address].set_members(members)

    async def kill(self, address: str) -> None:
        await self.nodes.pop(address).node.stop()


@pytest.fixture
async def grpc_cluster() -> AsyncIterator[GrpcCluster]:
    cluster = GrpcCluster(3)
    await asyncio.gather(*(cluster.start(a) for a in cluster.addresses))
    await eventually(lambda: all(ps.node.ready for ps in cluster.nodes.values()))
    yield cluster
    for ps in list(cluster.nodes.values()):
        await ps.stop()


async def test_publish_and_consume_over_grpc(grpc_cluster: GrpcCluster) -> None:
    a, b, c = (grpc_cluster.nodes[x] for x in grpc_cluster.addresses)
    topic = a.topic("orders", partitions=PARTITIONS)
    results = await asyncio.gather(
        *(topic.publish(f"m{i}".encode(), key=f"k{i % 3}") for i in range(100))
    )
    assert len({(r.partition, r.offset) for r in results}) == 100
    got = set()
    async with b.topic("orders", partitions=PARTITIONS).subscribe(group="g") as sub:
        while len(got) < 100:
            msg = await sub.next(timeout=10)
            assert msg is not None
            got.add(msg.data)
            await msg.ack()
    assert got == {f"m{i}".encode() for i in range(100)}
    replay = [m async for m in c.topic("orders", partitions=PARTITIONS).read(start=0)]
    assert len(replay) == 100


async def test_sequencer_killed_under_load_loses_no_acked_publish(
    grpc_cluster: GrpcCluster,
) -> None:
    addresses = grpc_cluster.addresses
    first = grpc_cluster.nodes[addresses[0]]
    victim = first.node.preference_list(ring_key("t", 0), 3)[0]
    publisher = grpc_cluster.nodes[next(a for a in addresses if a != victim)]
    topic = publisher.topic("t", partitions=PARTITIONS)
    acked: dict[tuple[int, int], bytes] = {}
    stop = asyncio.Event()

    async def publish_loop(worker: int) -> None:
        i = 0
        while not stop.is_set() and i < 5000:  # bounded
            data = f"w{worker}-{i}".encode()
            try:
                r = await topic.publish(data, msg_id=data.decode())
            except (PublishError, PartitionUnavailableError):
                continue  # not acknowledged; retried with the same msg_id
            assert acked.setdefault((r.partition, r.offset), data) == data
            i += 1

    tasks = [asyncio.ensure_future(publish_loop(w)) for w in range(4)]
    await eventually(lambda: len(acked) >= 200)
    await grpc_cluster.kill(victim)
    grpc_cluster.set_members([a for a in addresses if a != victim])
    count = len(acked)
    await eventually(lambda: len(acked) >= count + 200)
    stop.set()
    await asyncio.gather(*tasks)
    seen: dict[tuple[int, int], bytes] = {}
    async for m in topic.read(start=0):
        assert (m.partition, m.offset) not in seen
        seen[(m.partition, m.offset)] = m.data
    lost = [k for k, v in acked.items() if seen.get(k) != v]
    assert not lost, f"{len(lost)} acknowledged publishes lost"
    assert len(set(seen.values())) == len(seen), "a message stored twice"
