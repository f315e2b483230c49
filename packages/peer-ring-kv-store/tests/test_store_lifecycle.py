"""KVStore shutdown: graceful by default, abrupt by name, always complete."""

from __future__ import annotations

import asyncio

import pytest

from peer_ring.core import PeerRingConfig
from peer_ring.core.testing import FakeClock, FixedDiscovery, MemoryNetwork, settle_loop
from peer_ring.kv import KVStore

PEERS = [f"127.0.0.{i}:7201" for i in range(1, 4)]
CONFIG = PeerRingConfig(partitions=64, request_timeout=1.0, leave_deadline=5.0)


def make_store(address: str, network: MemoryNetwork, clock: FakeClock) -> KVStore:
    return KVStore(
        FixedDiscovery(address, PEERS),
        replication=2,
        config=CONFIG,
        transport=network.transport(address),
        clock=clock,
    )


async def start_all(stores: list[KVStore]) -> None:
    for s in stores:
        await s.start()
    await asyncio.gather(*(s.wait_ready() for s in stores))
    await settle_loop()


async def test_context_exit_leaves_gracefully() -> None:
    clock = FakeClock()
    network = MemoryNetwork(clock)
    a, b, c = (make_store(p, network, clock) for p in PEERS)
    await b.start()
    await c.start()
    async with a:
        await asyncio.gather(a.wait_ready(), b.wait_ready(), c.wait_ready())
        await settle_loop()
        assert a.node.address in b.node.ring.members
    # The peers took the leaver out of their ring at once (no failure detector wait).
    assert a.node.address not in b.node.ring.members
    assert a.node.address not in c.node.ring.members
    assert not a.running
    await b.abort()
    await c.abort()


async def test_stop_returns_the_handoff_report_and_abort_does_not_leave() -> None:
    clock = FakeClock()
    network = MemoryNetwork(clock)
    a, b, c = (make_store(p, network, clock) for p in PEERS)
    await start_all([a, b, c])
    await a.set("k", b"v", quorum=2)
    report = await a.stop()
    assert report is not None and set(report.acknowledged) == {b.node.address, c.node.address}
    assert await a.stop() is None  # idempotent
    await c.abort()
    assert c.node.address in b.node.ring.members  # an abort is not announced
    assert await b.get("k", quorum=1) == b"v"
    await b.abort()


async def test_stop_stops_everything_when_a_background_task_died(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(*args: object) -> None:
        raise RuntimeError("expiry broke")

    monkeypatch.setattr("peer_ring.kv._store.run_active_expiry", broken)
    clock = FakeClock()
    network = MemoryNetwork(clock)
    a = make_store(PEERS[0], network, clock)
    await a.start()
    await settle_loop()
    await a.stop()  # does not re-raise the task's error
    assert not a.running
    assert not a.node.running
