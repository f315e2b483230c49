"""Review of per-call sizes checked once per ring (e825f9e), over real TCP.

A store remembers the ``(replication, quorum)`` pairs it accepted and forgets them when its
ring changes. Here the ring changes the way it does in production, through discovery (a
member removed and added back), while writers keep calling with the same pair: no call
with ``replication=3, quorum=3`` is accepted while the ring has 2 members (it fails as
too large for the cluster, not at its quorum), and once the member is back the pair is
accepted again and its writes reach 3 copies.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from peer_ring.core import PeerRingConfig
from peer_ring.core.testing import FixedDiscovery, free_port
from peer_ring.kv import ClusterTooSmallError, KVStore

LIMIT = 60.0
CONFIG = PeerRingConfig(partitions=16, request_timeout=5.0, transport="tcp", down_after=None)


async def eventually(predicate: Callable[[], bool]) -> None:
    """Poll a condition of real nodes (there is no event to wait for), bounded in time."""
    deadline = time.monotonic() + LIMIT
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


@pytest.fixture
async def stores() -> AsyncIterator[tuple[list[KVStore], list[FixedDiscovery]]]:
    peers = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    discoveries = [FixedDiscovery(p, peers) for p in peers]
    made = [KVStore(d, replication=3, config=CONFIG) for d in discoveries]
    try:
        for s in made:
            await s.start()
        await asyncio.wait_for(asyncio.gather(*(s.wait_ready(LIMIT) for s in made)), LIMIT)
        yield made, discoveries
    finally:
        for s in made:
            await s.abort()


async def test_a_remembered_pair_follows_the_ring_through_discovery(
    stores: tuple[list[KVStore], list[FixedDiscovery]],
) -> None:
    (a, b, c), discoveries = stores
    peers = [s.node.address for s in (a, b, c)]
    for i in range(5):  # accepted and remembered
        await a.set(f"k{i}", b"v", replication=3, quorum=3)
    # c leaves the member set of a and b (it keeps running: a reachable non-member).
    for d in discoveries[:2]:
        d.set_members(peers[:2])
    await eventually(lambda: len(a.node.ring) == 2)
    with pytest.raises(ClusterTooSmallError):
        await a.set("k0", b"w", replication=3, quorum=3)
    with pytest.raises(ClusterTooSmallError):
        await a.get("k0", replication=3, quorum=3)
    await a.set("k0", b"x", replication=3, quorum=2)  # still fits: 2 copies of 2 members
    assert await b.get("k0", replication=3, quorum=2) == b"x"
    # Writers with the remembered pair while c comes back: before the ring grows each call
    # is refused as too large, after it each is accepted; none fails any other way.
    outcomes: list[str] = []
    stop = asyncio.Event()

    async def writer() -> None:
        for i in range(100_000):  # bounded: stop ends it long before
            if stop.is_set():
                return
            try:
                await a.set(f"w{i}", b"v", replication=3, quorum=3)
            except ClusterTooSmallError:
                outcomes.append("too-small")
            else:
                outcomes.append("ok")
            await asyncio.sleep(0.005)  # a paced writer, not a sync point

    task = asyncio.ensure_future(writer())
    await eventually(lambda: "too-small" in outcomes)
    for d in discoveries[:2]:
        d.set_members(peers)
    await eventually(lambda: len(a.node.ring) == 3)
    await eventually(lambda: outcomes.count("ok") >= 5)
    stop.set()
    await asyncio.wait_for(task, LIMIT)
    first_ok = outcomes.index("ok")
    assert set(outcomes[:first_ok]) == {"too-small"}
    assert set(outcomes[first_ok:]) == {"ok"}, outcomes
    # Accepted with a quorum of 3 under the 3-member ring: all three hold the last one.
    last = f"w{len(outcomes) - 1}".encode()
    assert all(s.engine.get_record(last) is not None for s in (a, b, c))
