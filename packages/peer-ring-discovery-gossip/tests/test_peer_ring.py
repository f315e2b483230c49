"""Gossip discovery under real ``PeerRing`` nodes (real gRPC between them, one process)."""

from __future__ import annotations

import asyncio
import time

from peer_ring.core import Command, PeerRing, PeerRingConfig
from peer_ring.core.testing import free_port
from peer_ring.discovery.gossip import GossipDiscovery

ECHO = Command("echo", reads=True)


async def _until(predicate, timeout: float, nodes: list[PeerRing], what: str) -> None:
    # The nodes apply snapshots on their own tasks; poll their public view.
    deadline = time.monotonic() + timeout
    while not predicate():
        views = {n.address: sorted(n.members) for n in nodes}
        assert time.monotonic() < deadline, f"no {what} within {timeout:.1f} s: views {views}"
        await asyncio.sleep(0.05)


async def test_three_peer_ring_nodes_on_gossip(fast_config, bounds) -> None:
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    discoveries: list[GossipDiscovery] = []
    nodes: list[PeerRing] = []
    try:
        for address in addresses:
            seeds = [discoveries[0].gossip_address] if discoveries else []
            d = GossipDiscovery("127.0.0.1:0", seeds, self_address=address, config=fast_config)
            node = PeerRing(d, config=PeerRingConfig(replication=3, partitions=64))
            node.register("test", ECHO, lambda ctx, key, payload: payload)
            await node.start()
            discoveries.append(d)
            nodes.append(node)
        limit = bounds(fast_config, len(addresses))
        formed = "ring of all three"
        await _until(
            lambda: all(set(n.members) == set(addresses) for n in nodes), limit.join, nodes, formed
        )
        result = await nodes[0].execute("test", ECHO, b"k", b"hi", replication=3, quorum=3)
        assert result.ok_replies and all(p == b"hi" for p in result.payloads)

        await nodes[2].stop()  # its discovery's stop announces the leave
        left = "ring without the node that left"
        await _until(
            lambda: all(set(n.members) == set(addresses[:2]) for n in nodes[:2]),
            limit.leave,
            nodes[:2],
            left,
        )
    finally:
        for node in nodes:
            await node.stop()
