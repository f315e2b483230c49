"""Data movement over real gRPC on loopback (127.0.0.1, .2, .3 sharing one port).

The in-memory tests prove the mechanisms; these prove that they work through the real
transport: bulk transfers, internal commands, probes and the leave handshake. Waits are
events (``wait_ready``, the leave itself) bounded by ``asyncio.wait_for``; no sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from peer_ring.core import PeerRingConfig
from peer_ring.core.testing import FixedDiscovery, free_port
from peer_ring.kv import KVStore

HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
LIMIT = 20.0  # real seconds; only reached on a bug
CONFIG = PeerRingConfig(
    partitions=32,
    request_timeout=2.0,
    probe_interval=0.2,
    probe_timeout=1.0,
    down_after=None,
    handoff_delay=0.1,
    anti_entropy_interval=None,
)


@pytest.fixture
async def addresses() -> AsyncIterator[list[str]]:
    port = free_port(*HOSTS)
    yield [f"{host}:{port}" for host in HOSTS]


DISCOVERIES: dict[str, FixedDiscovery] = {}


async def start(address: str, peers: list[str]) -> KVStore:
    DISCOVERIES[address] = discovery = FixedDiscovery(address, peers)
    store = KVStore(discovery, config=CONFIG)
    await store.start()
    return store


async def test_a_joining_node_pulls_over_grpc_and_a_leaving_node_hands_off(
    addresses: list[str],
) -> None:
    first = addresses[:2]
    a = await start(addresses[0], first)
    b = await start(addresses[1], first)
    stores = [a, b]
    try:
        await asyncio.wait_for(asyncio.gather(a.wait_ready(), b.wait_ready()), LIMIT)
        data = {f"key-{i}": b"value-%d" % i for i in range(300)}
        await a.mset(data, quorum=2)
        c = await start(addresses[2], addresses)
        stores.append(c)
        DISCOVERIES[a.node.address].set_members(addresses)
        DISCOVERIES[b.node.address].set_members(addresses)
        await asyncio.wait_for(c.wait_ready(), LIMIT)
        assert len(c.engine) == len(data)  # N=3 on 3 nodes: c holds everything
        assert c.node.sync_status()["partitions"]["bytes_received"] > 0
        report = await asyncio.wait_for(a.leave(deadline=10.0), LIMIT)
        assert report.complete, report
        assert set(report.acknowledged) == {b.node.address, c.node.address}
        for key, value in data.items():
            assert await c.get(key, quorum=2) == value
    finally:
        for store in stores:
            await store.stop()


async def test_a_killed_node_restarts_empty_and_pulls_everything_back(
    addresses: list[str],
) -> None:
    stores = [await start(address, addresses) for address in addresses]
    try:
        await asyncio.wait_for(asyncio.gather(*(s.wait_ready() for s in stores)), LIMIT)
        data = {f"key-{i}": b"value-%d" % i for i in range(300)}
        await stores[0].mset(data, quorum=3)
        await stores[2].abort()  # a crash: no leave, its memory is gone
        stores[2] = await start(addresses[2], addresses)
        assert len(stores[2].engine) == 0
        await asyncio.wait_for(stores[2].wait_ready(), LIMIT)
        assert len(stores[2].engine) == len(data)
        got = await stores[2].mget(list(data), quorum=2)
        assert got == data
    finally:
        for store in stores:
            await store.stop()
