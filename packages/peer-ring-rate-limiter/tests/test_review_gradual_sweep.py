"""Review of the gradual sweep of expired states (3af78f4): other work runs between its
slices of partitions, so what it finds may change under it.

- a key of a slice not swept yet that gets a new decision (``put``) or a newer record
  (``merge``) meanwhile is kept; expired keys nobody touched are dropped; the count
  returned is what was dropped;
- the digests of a swept partition are those of a store that never held the dropped
  entries (anti-entropy compares digests: a stale one would make nodes disagree);
- a limiter over real TCP admits exactly its limit of hits arriving while sweeps run,
  and a key whose state was swept starts a new window.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from peer_ring.core import PeerRingConfig
from peer_ring.core.testing import FixedDiscovery, free_port
from peer_ring.ratelimit import Algorithm, Limit, RateLimiter
from peer_ring.ratelimit._state import FixedWindowState
from peer_ring.ratelimit._store import StateStore
from peer_ring.ratelimit._wire import Entry

PARTITIONS = 96
NOW = 1000.0
RETAIN = 30.0


def part_of(key: bytes) -> int:
    return int(key.split(b":")[1])


def store() -> StateStore:
    return StateStore(lambda: NOW, part_of, retain=RETAIN)


def old(seq: int = 1) -> Entry:
    return Entry(seq, FixedWindowState(0.0, 1), NOW - 100.0)  # expired 100 s ago


def live(seq: int = 1) -> Entry:
    return Entry(seq, FixedWindowState(NOW, 1), NOW + 10.0)


def filled() -> StateStore:
    """Per partition: an expired entry ``old:p`` and a live one ``new:p``."""
    s = store()
    for p in range(PARTITIONS):
        s.put(f"old:{p}".encode(), old(), p)
        s.put(f"new:{p}".encode(), live(), p)
    return s


async def test_keys_decided_again_mid_sweep_are_kept_and_the_count_is_exact() -> None:
    s = filled()
    turns = 0
    touched: list[int] = []
    ahead: list[int] = []  # touched before the sweep reached them (their old entry held)

    async def meddle() -> None:
        # Each turn the sweep yields, touch the expired key of a partition far ahead of
        # it: a new decision (put), a newer record from the owner (merge), alternately.
        nonlocal turns
        for p in range(PARTITIONS - 1, 40, -7):
            await asyncio.sleep(0)
            turns += 1
            key = f"old:{p}".encode()
            if s.get(key, p) is not None:
                ahead.append(p)
            if len(touched) % 2:
                assert s.merge(key, live(seq=2), p)
            else:
                s.put(key, live(seq=2), p)
            touched.append(p)

    meddler = asyncio.ensure_future(meddle())
    dropped = await s.sweep_gradually(per_turn=8)
    await meddler
    assert turns > 3 and len(ahead) >= 4 and len(ahead) < len(touched), (ahead, touched)
    for p in range(PARTITIONS):
        entry = s.get(f"old:{p}".encode(), p)
        if p in touched:
            assert entry is not None and entry.seq == 2, p
        else:
            assert entry is None, p
        assert s.get(f"new:{p}".encode(), p) == live()
    # Dropped: every expired key the sweep found (a touched one it had swept already,
    # re-created since, counts), none it found decided again.
    assert dropped == PARTITIONS - len(ahead)
    assert len(s) == PARTITIONS + len(touched)  # the live keys and the touched ones


async def test_digests_after_a_gradual_sweep_are_those_of_the_survivors() -> None:
    s = filled()
    before = {p: tuple(s.digest_partition(p)) for p in range(PARTITIONS)}  # cached now
    assert await s.sweep_gradually(per_turn=8) == PARTITIONS
    survivors = store()
    for p in range(PARTITIONS):
        survivors.put(f"new:{p}".encode(), live(), p)
    for p in range(PARTITIONS):
        assert tuple(s.digest_partition(p)) == tuple(survivors.digest_partition(p)), p
        assert tuple(s.digest_partition(p)) != before[p], p


async def test_a_partition_emptied_by_the_sweep_and_written_again_meanwhile() -> None:
    """Only expired entries in a partition: its slice removes the partition. A put to it
    right after (another task, same sweep) starts it again, and a second sweep keeps it."""
    s = store()
    for p in range(PARTITIONS):
        s.put(f"old:{p}".encode(), old(), p)
    done: list[int] = []

    async def write_behind() -> None:
        for _ in range(3):
            await asyncio.sleep(0)
        # Partitions 0-7 are swept by now (first slice): write to one of them.
        assert s.get(b"old:3", 3) is None
        s.put(b"fresh:3", live(), 3)
        done.append(3)

    writer = asyncio.ensure_future(write_behind())
    assert await s.sweep_gradually(per_turn=8) == PARTITIONS
    await writer
    assert done == [3]
    assert list(s.keys()) == [b"fresh:3"]
    assert await s.sweep_gradually(per_turn=8) == 0
    assert s.get(b"fresh:3", 3) == live()


# -- a limiter over real TCP, sweeping while it admits -------------------------------------


@pytest.fixture
async def limiters() -> AsyncIterator[list[RateLimiter]]:
    """Three TCP limiters, retain 2 s: a sweep every second."""
    peers = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    config = PeerRingConfig(partitions=256, transport="tcp", down_after=None)
    made = [
        RateLimiter(
            FixedDiscovery(a, peers),
            replication=2,
            config=config,
            timeout=20.0,
            retain=2.0,
            fail_policy="fail-closed",
        )
        for a in peers
    ]
    try:
        for rl in made:
            await rl.start()
        await asyncio.wait_for(asyncio.gather(*(rl.node.wait_ready() for rl in made)), 60)
        yield made
    finally:
        for rl in made:
            await rl.stop()


@pytest.mark.slow
async def test_hits_during_sweeps_are_admitted_exactly_and_swept_keys_start_over(
    limiters: list[RateLimiter],
) -> None:
    short = Limit(1, 0.05, algorithm=Algorithm.FIXED_WINDOW)
    # 600 short-lived states over most partitions: each sweep has many slices.
    first = await asyncio.wait_for(
        asyncio.gather(*(limiters[i % 3].hit(f"junk:{i}", short) for i in range(600))), 60
    )
    assert all(d.allowed for d in first)
    held = sum(len(rl._store) for rl in limiters)
    assert held >= 600  # each on its owner, most on a replica too
    window = Limit(40, 600.0, algorithm=Algorithm.FIXED_WINDOW)
    allowed = 0
    started = time.monotonic()
    rounds = 0
    # About 3.5 s of hits (3 sweeps on each node), 12 per round from all three nodes.
    while time.monotonic() - started < 3.5 and rounds < 400:  # bounded
        decisions = await asyncio.wait_for(
            asyncio.gather(*(limiters[i % 3].hit("api:k", window) for i in range(12))), 60
        )
        allowed += sum(d.allowed for d in decisions)
        rounds += 1
        await asyncio.sleep(0.02)  # a paced load, spread over the sweeps
    assert rounds * 12 > 40
    assert allowed == 40
    # The junk states expired 3.5 s ago, more than retain (2 s): swept everywhere.
    left = [k for rl in limiters for k in rl._store.keys() if k.startswith(b"junk")]  # noqa: SIM118
    assert left == []
    again = await asyncio.wait_for(
        asyncio.gather(*(limiters[(i + 1) % 3].hit(f"junk:{i}", short) for i in range(600))),
        60,
    )
    assert all(d.allowed for d in again)  # a new window each, nothing left over
