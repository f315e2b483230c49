"""A peer that leaves the member set leaves no connection or reconnect loop behind.

On Kubernetes every rolled pod is a new address: a transport that kept reconnecting to
each departed one would accumulate loops for ever. The node forgets a peer (the
transport closes its connection) when discovery stops listing it, or when a peer that
announced a leave stops answering; a peer that is merely suspected or down keeps being
probed (it may come back).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from peer_ring.core import PeerRing, PeerRingConfig
from peer_ring.core.testing import FakeClock, FixedDiscovery, MemoryNetwork, free_port, settle_loop
from peer_ring.core.transport import GrpcTransport, TransportLimits

P = 16
CONFIG = PeerRingConfig(
    partitions=P,
    replication=2,
    request_timeout=1.0,
    probe_interval=1.0,
    probe_timeout=0.5,
    suspicion_timeout=2.0,
    down_after=3.0,
    anti_entropy_interval=None,
)
# Short reconnect delays: a loop that survived the removal would count many attempts.
LIMITS = TransportLimits(backoff_initial=0.1, backoff_max=0.5, connect_timeout=1.0)
REAL_LIMIT = 10.0  # bound of every wait on real I/O


async def real_until(predicate: Callable[[], bool], clock: FakeClock | None = None) -> None:
    """Wait (real time, bounded) for ``predicate``, moving the fake clock meanwhile."""
    deadline = asyncio.get_running_loop().time() + REAL_LIMIT
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        if clock is not None:
            await clock.advance_async(0.1)
        await asyncio.sleep(0.01)


# -- real gRPC ---------------------------------------------------------------------------


@pytest.fixture
async def grpc_cluster() -> AsyncIterator[tuple[FakeClock, list[PeerRing], list[FixedDiscovery]]]:
    clock = FakeClock()
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    discoveries = [FixedDiscovery(a, addrs) for a in addrs]
    nodes = [
        PeerRing(
            d, config=CONFIG, transport=GrpcTransport(a, limits=LIMITS, clock=clock), clock=clock
        )
        for a, d in zip(addrs, discoveries, strict=True)
    ]
    for node in nodes:
        await node.start()
    try:
        yield clock, nodes, discoveries
    finally:
        for node in nodes:
            await node.stop()


async def test_a_peer_removed_from_discovery_is_no_longer_reconnected(
    grpc_cluster: tuple[FakeClock, list[PeerRing], list[FixedDiscovery]],
) -> None:
    clock, (a, b, c), discoveries = grpc_cluster
    transport = a.transport
    assert isinstance(transport, GrpcTransport)
    await asyncio.wait_for(transport.connect(c.address), REAL_LIMIT)
    await c.stop()
    # While c is still listed, a keeps trying to reach it (the counter sees reconnects)...
    before = transport.stats()["connect_failures"]
    await real_until(lambda: transport.stats()["connect_failures"] >= before + 3, clock)
    assert c.address in transport.peers()
    # ...c is removed from discovery (the pod was rolled): a forgets it.
    discoveries[0].set_members([a.address, b.address])
    await real_until(lambda: c.address not in transport.peers())
    assert a.sync_status()["membership"]["peers_forgotten"] == 1
    stopped_at = transport.stats()["connect_failures"]
    # Far past every backoff and many probe intervals: no new attempt to reach c.
    for _ in range(30):
        await clock.advance_async(1.0)
        await asyncio.sleep(0.01)  # real I/O of an attempt, had one been started
    assert transport.stats()["connect_failures"] == stopped_at
    assert c.address not in transport.peers()
    assert b.address in transport.peers()  # the remaining peer is still connected


# -- in memory: which departures forget, which do not -------------------------------------


ADDRS = [f"127.0.0.{i}:7101" for i in range(1, 5)]


@pytest.fixture
async def memory_cluster() -> AsyncIterator[tuple[FakeClock, MemoryNetwork, dict[str, PeerRing]]]:
    clock = FakeClock()
    network = MemoryNetwork(clock)
    nodes: dict[str, PeerRing] = {}
    for address in ADDRS:
        node = PeerRing(
            FixedDiscovery(address, ADDRS),
            config=CONFIG,
            transport=network.transport(address),
            clock=clock,
        )
        await node.start()
        nodes[address] = node
    try:
        yield clock, network, nodes
    finally:
        for node in nodes.values():
            await node.stop()


async def test_a_down_peer_is_not_forgotten_and_comes_back(
    memory_cluster: tuple[FakeClock, MemoryNetwork, dict[str, PeerRing]],
) -> None:
    clock, network, nodes = memory_cluster
    a, d = nodes[ADDRS[0]], nodes[ADDRS[3]]
    network.pause(d.address)
    for _ in range(60):
        await clock.advance_async(0.1)
    assert d.address in a.sync_status()["membership"]["down"]
    assert d.address not in a.transport.forgotten  # type: ignore[attr-defined]
    network.resume(d.address)
    for _ in range(30):
        await clock.advance_async(0.1)
    assert d.address in a.ring  # probed, answered, back


async def test_a_peer_that_left_is_forgotten_once_it_stops_answering(
    memory_cluster: tuple[FakeClock, MemoryNetwork, dict[str, PeerRing]],
) -> None:
    clock, _network, nodes = memory_cluster
    a, d = nodes[ADDRS[0]], nodes[ADDRS[3]]
    leaving = asyncio.ensure_future(d.leave(deadline=5.0))
    for _ in range(100):
        if leaving.done():
            break
        await clock.advance_async(0.1)
    await leaving
    await settle_loop()
    assert d.address not in a.ring
    # Still listed by discovery: probed once per interval (to see it restart), and its
    # connection dropped after each failed probe.
    for _ in range(30):
        await clock.advance_async(0.1)
    assert d.address in a.transport.forgotten  # type: ignore[attr-defined]
