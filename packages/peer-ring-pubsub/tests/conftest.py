"""Shared fixtures of the pub-sub tests: an in-memory cluster driven by a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from peer_ring.core import Clock, PeerRingConfig
from peer_ring.core.testing import FakeClock, FixedDiscovery, MemoryNetwork, settle_loop
from peer_ring.pubsub import PubSub

CORE_CONFIG = PeerRingConfig(
    partitions=64,
    replication=3,
    quorum=2,
    request_timeout=1.0,
    probe_interval=0.5,
    probe_timeout=0.5,
    suspicion_timeout=2.0,
    down_after=None,
    anti_entropy_interval=None,
)


class MemoryCluster:
    """PubSub nodes on a MemoryNetwork; the fake clock jumps to the next timer when idle."""

    def __init__(self, replication: int = 3, quorum: int = 2) -> None:
        self.clock = FakeClock()
        self.network = MemoryNetwork(self.clock)
        self.replication = replication
        self.quorum = quorum
        self.members: list[str] = []
        self.nodes: dict[str, PubSub] = {}
        self.discoveries: dict[str, FixedDiscovery] = {}
        self._driver: asyncio.Task[None] | None = None
        #: A node's own clock (e.g. a skewed one) instead of the shared fake clock.
        self.clocks: dict[str, Clock] = {}

    def _make(self, address: str) -> PubSub:
        discovery = FixedDiscovery(address, self.members)
        self.discoveries[address] = discovery
        return PubSub(
            discovery,
            replication=self.replication,
            quorum=self.quorum,
            config=CORE_CONFIG,
            transport=self.network.transport(address),
            clock=self.clocks.get(address, self.clock),
            timeout=20.0,
        )

    async def start(self, count: int) -> list[PubSub]:
        self.members = [f"127.0.0.{i}:7101" for i in range(1, count + 1)]
        nodes = [self._make(a) for a in self.members]
        for a, ps in zip(self.members, nodes, strict=True):
            self.nodes[a] = ps
        self._driver = asyncio.ensure_future(self._drive())
        await asyncio.gather(*(ps.start() for ps in nodes))
        await self.until(lambda: all(ps.node.ready for ps in nodes))
        return nodes

    async def _drive(self) -> None:
        # Autojump: whenever nothing is runnable, move fake time to the next timer.
        while True:
            await settle_loop(30)
            deadline = self.clock.next_deadline()
            if deadline is not None:
                self.clock.advance(max(0.0, deadline - self.clock.monotonic()))

    async def until(self, predicate: Callable[[], bool], within: float = 120.0) -> None:
        start = self.clock.monotonic()
        while not predicate():
            if self.clock.monotonic() - start > within:
                raise AssertionError("condition not reached in fake time")
            await settle_loop(10)

    def set_members(self, members: list[str]) -> None:
        """Tell every live node's discovery the new member set."""
        self.members = list(members)
        for address, discovery in self.discoveries.items():
            if address in self.nodes:
                discovery.set_members(members)

    async def kill(self, address: str) -> None:
        """Crash a node: its transport closes (peers see refused connections), state lost."""
        ps = self.nodes.pop(address)
        await ps.node.stop()

    async def restart_empty(self, address: str) -> PubSub:
        """Start a fresh (empty) node at ``address`` with the current members."""
        ps = self._make(address)
        self.nodes[address] = ps
        await ps.start()
        await self.until(lambda: ps.node.ready)
        return ps

    async def stop(self) -> None:
        for ps in list(self.nodes.values()):
            await ps.stop()
        if self._driver is not None:
            self._driver.cancel()
            await asyncio.gather(self._driver, return_exceptions=True)


@pytest.fixture
async def cluster() -> AsyncIterator[MemoryCluster]:
    c = MemoryCluster()
    yield c
    await c.stop()


@pytest.fixture
async def single_copy_cluster() -> AsyncIterator[MemoryCluster]:
    """A cluster whose partitions have one copy (N=1, W=1)."""
    c = MemoryCluster(replication=1, quorum=1)
    yield c
    await c.stop()
