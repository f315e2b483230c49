"""The application contract on loopback over each transport (real gRPC, and TCP with
``config.transport="tcp"``: the ``transport_kind`` fixture): execute_many with one replica
stopped (sloppy quorum, hints delivered when it is back), send, and the one handler path."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest

from peer_ring.core import (
    Command,
    CommandContext,
    InvalidArgumentError,
    PeerRing,
    PeerRingConfig,
    RemoteError,
)
from peer_ring.core.testing import free_port
from peer_ring.core.transport import TransportLimits
from peer_ring.discovery.static import StaticDiscovery

LIMITS = TransportLimits(connect_timeout=0.5, backoff_max=0.2)
CONFIG = PeerRingConfig(
    partitions=64,
    replication=3,
    request_timeout=1.0,
    probe_interval=0.2,
    probe_timeout=0.3,
    suspicion_timeout=0.5,
    down_after=None,
    anti_entropy_interval=None,
    transport_limits=LIMITS,
)
PUT = Command("put", mutates=True)
GET = Command("get", reads=True)
RAW = Command("raw")
BOOM = Command("boom")


class App:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def put(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        self.data[key] = payload
        return b""

    def get(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        return self.data.get(key, b"")

    def raw(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytearray:
        return bytearray(b"raw:" + key)

    async def boom(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        raise RuntimeError("async handler exploded")


class Cluster:
    def __init__(self, peers: list[str], transport_kind: str) -> None:
        self.peers = peers
        self.config = replace(CONFIG, transport=transport_kind)
        self.nodes: dict[str, PeerRing] = {}
        self.apps: dict[str, App] = {}

    async def start(self, address: str) -> PeerRing:
        node = PeerRing(StaticDiscovery(self.peers, self_address=address), config=self.config)
        app = App()
        node.register("t", PUT, app.put)
        node.register("t", GET, app.get)
        node.register("t", RAW, app.raw)
        node.register("t", BOOM, app.boom)
        await node.start()
        self.nodes[address] = node
        self.apps[address] = app
        return node


async def eventually(predicate: Callable[[], bool], within: float = 20.0) -> None:
    """Poll a condition of real networked nodes (no event to wait for), bounded in time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        assert loop.time() < deadline, f"condition not met within {within}s"
        await asyncio.sleep(0.05)


@pytest.fixture
async def cluster(transport_kind: str) -> AsyncIterator[Cluster]:
    hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"]
    port = free_port(*hosts)
    c = Cluster([f"{h}:{port}" for h in hosts], transport_kind)
    for address in c.peers:
        await c.start(address)
    for node in c.nodes.values():
        await node.wait_ready(20.0)
    # Peers that started later were suspected by the first ones: until the probes clear
    # that, writes go to substitutes as hints, which the tests below do not expect yet.
    await eventually(
        lambda: not any(n.sync_status()["membership"]["suspected"] for n in c.nodes.values())
    )
    yield c
    for node in c.nodes.values():
        await node.stop()


async def test_execute_many_survives_a_stopped_replica_and_delivers_hints(
    cluster: Cluster,
) -> None:
    a = cluster.nodes[cluster.peers[0]]
    items = [(f"key-{i}".encode(), b"v%d" % i) for i in range(100)]
    results = await a.execute_many("t", PUT, items, quorum=3)
    assert all(r.ok for r in results)
    # On a loaded machine a replica can be briefly unreachable from ``a`` (a probe or the
    # first connection late): its write then went to a substitute as a hint (sloppy
    # quorum), and a quorum read that asks that replica before the hint arrives sees
    # nothing. Wait until every preference-list replica holds the value (hints delivered).
    await eventually(
        lambda: all(
            cluster.apps[n].data.get(k) == v for k, v in items for n in a.preference_list(k, 3)
        )
    )
    reads = await a.execute_many("t", GET, [(k, b"") for k, _ in items], quorum=2)
    assert all(r.ok and r.payloads[0] == v for r, (_, v) in zip(reads, items, strict=True))

    down = cluster.peers[1]
    await cluster.nodes[down].stop()
    # gRPC lets a stopping server finish its open streams; the stopped node refuses
    # application requests on them (UNAVAILABLE), so they too go to substitutes as hints
    updates = [(k, v + b"-new") for k, v in items]
    hit = {k for k, _ in updates if down in a.preference_list(k, 3)}
    assert hit
    results = await a.execute_many("t", PUT, updates, replication=3, quorum=2)
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    await eventually(
        lambda: (
            sum(
                n.sync_status()["hints"]["pending"].get(down, 0)
                for addr, n in cluster.nodes.items()
                if addr != down
            )
            == len(hit)
        )
    )
    # the replica comes back empty; the hints bring it every update it missed
    back = await cluster.start(down)
    await eventually(
        lambda: all(cluster.apps[down].data.get(k) == v + b"-new" for k, v in items if k in hit)
    )
    assert back.running


async def test_send_and_the_one_handler_path(cluster: Cluster) -> None:
    a, b = (cluster.nodes[p] for p in cluster.peers[:2])
    a.send("t", PUT, b"fire", b"forget", nodes=[b.address])
    await eventually(lambda: cluster.apps[b.address].data.get(b"fire") == b"forget")
    for target in (a.address, b.address):
        assert await a.call(target, "t", RAW, b"k") == b"raw:k"
        with pytest.raises(RemoteError, match="RuntimeError: async handler exploded"):
            await a.call(target, "t", BOOM, b"k")
    with pytest.raises(InvalidArgumentError, match="registered as"):
        await a.execute_many("t", Command("put"), [(b"k", b"v")])
