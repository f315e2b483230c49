"""A cluster of nodes on one in-memory network and fake clock, each running a VersionedDict.

The harness of the core's data-movement tests (joins, leaves, pulls, hints, anti-entropy and
their error paths), usable by any test that needs a few nodes holding versioned data::

    async def test_join(loop_clock: FakeClock) -> None:      # a fake_time test
        cluster = MemoryCluster(loop_clock, MemoryNetwork(loop_clock), fake_time_config(32))
        a, b, c = await cluster.start_ready(ADDRS[:3])
        await a.execute("app", VersionedDict.PUT, b"k", versioned_payload(1, b"v"), quorum=3)
        ...
        await cluster.stop_all()

On a :class:`~peer_ring.core.testing.FakeClockEventLoop` the waits of :meth:`until` take no
real time: the loop jumps the clock whenever every task waits.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from peer_ring.core import PeerRing, PeerRingConfig
from peer_ring.core.testing._fake_clock import FakeClock
from peer_ring.core.testing._memory_network import MemoryNetwork
from peer_ring.core.testing._static import FixedDiscovery
from peer_ring.core.testing._versioned_dict import VersionedDict

__all__ = ["MemoryCluster", "fake_time_config"]


def fake_time_config(partitions: int = 32, **overrides: Any) -> PeerRingConfig:
    """Settings under which failure detection, handoff and sync retries take seconds.

    Probes every 0.5 s, suspicion after 2 s, a peer down after 3 s, handoff after 0.5 s,
    sync retries from 0.2 s to 1 s given up after 20 s, requests time out after 1 s, and no
    periodic anti-entropy (a test turns it on when it is the subject).

    Args:
        partitions: the ring's partition count.
        **overrides: further ``PeerRingConfig`` fields, replacing these.

    Returns:
        The configuration.
    """
    config = PeerRingConfig(
        partitions=partitions,
        request_timeout=1.0,
        probe_interval=0.5,
        probe_timeout=0.5,
        suspicion_timeout=2.0,
        down_after=3.0,
        handoff_delay=0.5,
        sync_retry_initial=0.2,
        sync_retry_max=1.0,
        sync_give_up_after=20.0,
        anti_entropy_interval=None,
    )
    return dataclasses.replace(config, **overrides)


class MemoryCluster:
    """Nodes sharing ``network`` and ``clock``, each with a :class:`VersionedDict` as ``"app"``.

    Attributes:
        clock: the fake clock of every node.
        network: the in-memory network (cut, partition, pause its links to inject faults).
        config: the configuration nodes start with unless :meth:`start` is given another.
        nodes: the started nodes by address.
        apps: each node's application by address.
        discoveries: each node's discovery by address (``set_members`` to change the cluster).
    """

    def __init__(self, clock: FakeClock, network: MemoryNetwork, config: PeerRingConfig) -> None:
        """Create an empty cluster.

        Args:
            clock: the fake clock (on a fake-time loop, the loop's: ``current_clock()``).
            network: the in-memory network on that clock.
            config: the default configuration of the nodes.
        """
        self.clock = clock
        self.network = network
        self.config = config
        self.nodes: dict[str, PeerRing] = {}
        self.apps: dict[str, VersionedDict] = {}
        self.discoveries: dict[str, FixedDiscovery] = {}

    async def start(
        self,
        address: str,
        peers: Sequence[str],
        config: PeerRingConfig | None = None,
        hooks: bool = True,
    ) -> PeerRing:
        """Start a node at ``address`` whose discovery lists ``peers``.

        A node started again at an address it had replaces it (a restart with an empty
        application).

        Args:
            address: the node's address on the network.
            peers: the members its discovery reports (itself included).
            config: its configuration (default: :attr:`config`).
            hooks: register the data hooks (``False``: the node has nothing to pull).

        Returns:
            The started node.
        """
        discovery = FixedDiscovery(address, list(peers))
        if config is None:
            config = self.config
        node = PeerRing(
            discovery, config=config, transport=self.network.transport(address), clock=self.clock
        )
        app = VersionedDict(config.partitions)
        app.register(node, hooks=hooks)
        await node.start()
        self.nodes[address] = node
        self.apps[address] = app
        self.discoveries[address] = discovery
        return node

    async def start_ready(self, addresses: Sequence[str]) -> list[PeerRing]:
        """Start one node per address, all listing ``addresses``, and wait until all are ready.

        Args:
            addresses: the nodes' addresses.

        Returns:
            The nodes, in the order of ``addresses``.
        """
        nodes = [await self.start(a, addresses) for a in addresses]
        await self.until(lambda: all(n.ready for n in nodes))
        return nodes

    async def until(self, predicate: Callable[[], bool], within: float = 60.0) -> None:
        """Let time run until ``predicate`` holds, checking it every 0.05 s of fake time.

        Args:
            predicate: the condition.
            within: seconds of fake time after which the wait fails.

        Raises:
            AssertionError: the condition did not hold within ``within`` seconds.
        """
        deadline = self.clock.monotonic() + within
        while not predicate():
            assert self.clock.monotonic() < deadline, (
                f"condition not met within {within}s of fake time"
            )
            await asyncio.sleep(0.05)

    async def stop_all(self) -> None:
        """Stop every node started (the last one started at each address)."""
        for node in self.nodes.values():
            await node.stop()
