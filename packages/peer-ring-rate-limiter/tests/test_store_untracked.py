"""The keys a node holds cost the garbage collector nothing per key.

Each key's entry and state used to be two slotted dataclass instances, both tracked by the
collector, so a full collection's pause grew with the number of keys held (4 collections of
111-2,421 ms over 1.5 million decisions at 200,000 keys). The store now keeps plain tuples
of numbers, which CPython stops tracking once they survive a collection.
"""

from __future__ import annotations

import gc

from peer_ring.core import PeerRingConfig
from peer_ring.core.testing import FakeClock, FixedDiscovery, MemoryNetwork
from peer_ring.ratelimit import Algorithm, Limit, RateLimiter
from peer_ring.ratelimit._algorithms import decide, expires_at
from peer_ring.ratelimit._store import StateStore
from peer_ring.ratelimit._wire import Entry

ALGORITHMS = list(Algorithm)
CONFIG = PeerRingConfig(partitions=64, request_timeout=1.0)


def _collect() -> int:
    """Tracked objects after full collections (one per level of nested tuples)."""
    for _ in range(3):
        gc.collect()
    return len(gc.get_objects())


def test_every_algorithms_entry_and_a_tombstone_round_trip_untracked() -> None:
    now = [100.0]
    store = StateStore(lambda: now[0], lambda k: k[0] % 7, retain=30.0)
    put: dict[bytes, Entry] = {}
    for i, algo in enumerate(ALGORITHMS):
        limit = Limit(10, 2.0, None, algo)
        state = None
        for hit in range(3):  # a log of several entries; counters above 1
            state, _ = decide(state, limit, 1 + hit, now[0] + hit * 0.1)
        key = bytes([i]) + algo.name.encode()
        put[key] = Entry(3, state, expires_at(state, limit, now[0]))
        store.put(key, put[key])
    put[b"\x09tomb"] = Entry(4, None, now[0] + 1.0)
    store.put(b"\x09tomb", put[b"\x09tomb"])
    _collect()
    held = [v for part in store._parts.values() for v in part.values()]
    assert len(held) == len(put)
    assert [v for v in held if gc.is_tracked(v)] == []
    assert {k: store.get(k) for k in put} == put  # same seq, state and expiry back


async def test_tracked_objects_do_not_grow_with_keys_held() -> None:
    clock = FakeClock()
    network = MemoryNetwork(clock)
    me = "127.0.0.1:7201"
    rl = RateLimiter(
        FixedDiscovery(me, [me]),
        config=CONFIG,
        transport=network.transport(me),
        clock=clock,
        replication=1,
    )
    await rl.start()
    try:
        limits = [Limit(100, 60.0, None, a) for a in ALGORITHMS]

        async def hold(first: int, last: int) -> None:
            for i in range(first, last):
                d = await rl.hit(f"gc:{i}", limits[i % len(limits)], cost=1)
                assert d.allowed
                if i % 50 == 0:
                    await rl.reset(f"gc:{i}")  # tombstones are held too

        await hold(0, 500)
        base = _collect()
        extra = 3_000
        await hold(500, 500 + extra)
        grown = _collect() - base
        assert rl.stats()["keys"] == 500 + extra
        # Two tracked objects per key before (entry and state); now none. The margin is
        # for unrelated objects the run allocates meanwhile.
        assert grown < 0.05 * extra, f"{grown} more tracked objects for {extra} more keys"
    finally:
        await rl.stop()
