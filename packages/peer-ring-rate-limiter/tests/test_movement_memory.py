"""State survives ownership changes: owner crash, rolling restart, clock skew (in memory)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from peer_ring.core import PeerRingConfig
from peer_ring.core.testing import FakeClock, FixedDiscovery, MemoryNetwork, settle_loop
from peer_ring.ratelimit import Limit, RateLimiter

LIMIT = Limit(100, 60.0, algorithm="fixed_window")
KEY = b"api:user:42"
PEERS = [f"127.0.0.{i}:7301" for i in range(1, 4)]
CONFIG = PeerRingConfig(
    partitions=64, request_timeout=1.0, down_after=3.0, suspicion_timeout=1.0, probe_interval=0.5
)


class SkewedClock:
    """A node's view of the shared fake clock, off by ``offset`` seconds."""

    def __init__(self, base: FakeClock, offset: float) -> None:
        self._base, self._offset = base, offset

    def time(self) -> float:
        return self._base.time() + self._offset

    def monotonic(self) -> float:
        return self._base.monotonic() + self._offset

    async def sleep(self, seconds: float) -> None:
        await self._base.sleep(seconds)

    def call_later(self, delay: float, callback: Callable[[], object]) -> object:
        return self._base.call_later(delay, callback)


class Cluster:
    def __init__(self, offsets: dict[str, float] | None = None) -> None:
        self.clock = FakeClock()
        self.network = MemoryNetwork(self.clock)
        self.offsets = offsets or {}
        self.nodes: dict[str, RateLimiter] = {}

    async def start(self, address: str) -> RateLimiter:
        rl = RateLimiter(
            FixedDiscovery(address, PEERS),
            replication=2,
            config=CONFIG,
            transport=self.network.transport(address),
            clock=SkewedClock(self.clock, self.offsets.get(address, 0.0)),  # type: ignore[arg-type]
            fail_policy="raise",
        )
        await rl.start()
        self.nodes[address] = rl
        return rl

    @property
    def running(self) -> list[RateLimiter]:
        return [rl for rl in self.nodes.values() if rl.node.running]

    async def until(self, predicate: Callable[[], bool], within: float = 60.0) -> None:
        waited = 0.0
        while not predicate():
            assert waited < within, "condition not met in fake time"
            await self.clock.advance_async(0.1, settle=60)
            waited += 0.1
        await settle_loop(60)

    def owner(self) -> str:
        return self.running[0].node.preference_list(KEY, 1)[0]

    async def hammer(self, n: int) -> int:
        nodes = self.running
        out = await asyncio.gather(*(nodes[i % len(nodes)].hit(KEY, LIMIT) for i in range(n)))
        return sum(d.allowed for d in out)

    async def stop(self) -> None:
        for rl in self.running:
            await rl.stop()


async def started(cluster: Cluster) -> Cluster:
    for a in PEERS:
        await cluster.start(a)
    await asyncio.gather(*(rl.node.wait_ready() for rl in cluster.running))
    await settle_loop(60)
    return cluster


async def crash_owner(c: Cluster) -> str:
    """kill -9 of the key's owner: it stops answering, hands nothing off."""
    owner = c.owner()
    c.network.pause(owner)
    await c.nodes[owner].stop()
    await c.until(lambda: all(owner not in rl.node.ring.members for rl in c.running))
    await c.until(lambda: all(rl.node.ready for rl in c.running))
    return owner


async def test_kill_9_of_the_owner_mid_window_loses_no_admitted_hit() -> None:
    c = await started(Cluster())
    try:
        assert await c.hammer(60) == 60
        old = await crash_owner(c)
        assert c.owner() != old
        # The new owner continues from the replicated count: 40 left, not a second 100.
        assert await c.hammer(1000) == 40
    finally:
        await c.stop()


async def test_state_sent_with_the_answer_survives_a_kill_9_of_the_owner() -> None:
    """Hits forwarded by the key's second replica: the owner replicates by answering (the
    new state travels with each decision) and sends no replication message; the replica
    stored each state before releasing its decision, so the new owner continues from 60."""
    c = await started(Cluster())
    try:
        owner, second = c.running[0].node.preference_list(KEY, 2)
        replica, owning = c.nodes[second], c.nodes[owner]
        messages = owning.stats()["state_batches"]
        out = await asyncio.gather(*(replica.hit(KEY, LIMIT) for _ in range(60)))
        assert sum(d.allowed for d in out) == 60
        assert owning.stats()["states_with_answer"] == 60
        assert owning.stats()["state_batches"] == messages
        held, decided = replica.store.get(KEY), owning.store.get(KEY)
        assert held is not None and decided is not None and held.seq == decided.seq == 60
        await crash_owner(c)
        assert c.owner() == second
        assert await c.hammer(1000) == 40
    finally:
        await c.stop()


async def test_rolling_restart_of_every_node_keeps_the_count() -> None:
    c = await started(Cluster())
    try:
        admitted = await c.hammer(30)
        for address in PEERS:
            await c.nodes[address].leave(5.0)
            await c.until(lambda: all(rl.node.ready for rl in c.running))
            admitted += await c.hammer(10)
            await c.start(address)  # a fresh, empty process on the same address
            await c.until(lambda: all(rl.node.ready for rl in c.running))
            admitted += await c.hammer(10)
        assert admitted == 90
        assert await c.hammer(500) == 10
    finally:
        await c.stop()


async def test_clock_skew_of_one_second_changes_no_admission_count() -> None:
    """Nodes' clocks differ by up to 2 s; the window still ends 60 real seconds after its
    first hit, after the owner moved to a node whose clock reads differently."""
    outcomes = []
    for offsets in ({PEERS[0]: -1.0, PEERS[1]: 0.0, PEERS[2]: +1.0}, {}):
        c = await started(Cluster(offsets))
        try:
            t0 = c.clock.monotonic()
            first = await c.hammer(60)
            await crash_owner(c)
            second = await c.hammer(500)
            await c.clock.advance_async(t0 + 59.5 - c.clock.monotonic(), settle=60)
            before_end = await c.hammer(10)
            await c.clock.advance_async(1.0, settle=60)
            after_end = await c.hammer(10)
            outcomes.append((first, second, before_end, after_end))
        finally:
            await c.stop()
    assert outcomes == [(60, 40, 0, 10), (60, 40, 0, 10)]
