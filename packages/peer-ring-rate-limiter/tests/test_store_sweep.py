"""The store's periodic sweep gives the event loop turns between slices of partitions.

A sweep in one pass held the loop for every entry of the node (16-20 ms for 20,000 entries
on a busy core), and every hit arriving meanwhile waited it out. ``sweep_gradually`` does
the same work ``per_turn`` partitions at a time.
"""

from __future__ import annotations

import asyncio

from peer_ring.ratelimit._state import FixedWindowState
from peer_ring.ratelimit._store import StateStore
from peer_ring.ratelimit._wire import Entry

PARTITIONS = 40
NOW = [1000.0]


def filled(retain: float = 30.0) -> StateStore:
    """Per partition: one entry expired long ago, one still live."""
    s = StateStore(lambda: NOW[0], lambda k: int(k.split(b":")[1]), retain=retain)
    for p in range(PARTITIONS):
        s.put(f"old:{p}".encode(), Entry(1, FixedWindowState(0.0, 1), NOW[0] - 100.0), p)
        s.put(f"new:{p}".encode(), Entry(1, FixedWindowState(NOW[0], 1), NOW[0] + 10.0), p)
    return s


async def test_sweep_gradually_yields_between_slices_and_drops_what_sweep_drops() -> None:
    s = filled()
    seen: list[int] = []  # entries left, each time another task got the loop mid-sweep

    async def watcher() -> None:
        while True:
            seen.append(len(s))
            await asyncio.sleep(0)

    task = asyncio.ensure_future(watcher())
    await asyncio.sleep(0)  # the watcher records the full store once
    dropped = await s.sweep_gradually(per_turn=10)
    task.cancel()
    assert dropped == PARTITIONS
    assert sorted(s.keys()) == sorted(f"new:{p}".encode() for p in range(PARTITIONS))
    # 4 slices of 10 partitions: the loop ran the watcher between them, each time with
    # 10 more expired entries gone (a single pass would show only the first and last).
    mid = [n for n in seen if PARTITIONS < n < 2 * PARTITIONS]
    assert sorted(set(mid), reverse=True) == [70, 60, 50], seen
    plain = filled()
    assert plain.sweep() == dropped and sorted(plain.keys()) == sorted(s.keys())


async def test_sweep_gradually_survives_partitions_changing_meanwhile() -> None:
    s = filled()
    p = 35  # a partition of a later slice, emptied while the first slice is swept

    async def meddle() -> None:
        s.drop_partition(p)  # the partition moved away (data movement)

    meddler = asyncio.ensure_future(meddle())
    dropped = await s.sweep_gradually(per_turn=10)
    await meddler
    assert dropped == PARTITIONS - 1
    assert len(s) == PARTITIONS - 1


def test_sweep_of_given_partitions_only() -> None:
    s = filled()
    assert s.sweep([0, 1, 2, 999]) == 3  # a partition not held is skipped
    assert len(s) == 2 * PARTITIONS - 3
