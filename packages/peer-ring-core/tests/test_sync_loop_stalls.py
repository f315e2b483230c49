"""Background sync does not hold the event loop for a whole round (issue 23).

An anti-entropy round computes the roots of every partition it compares, and the peer
answering its ``digests`` request does the same: in one pass that held the loop for
10-25 ms. These tests count *loop turns* (a task that only yields) between the digest-hook
calls of a round, on the fake-time loop: no timing is asserted. They also pin what the
root cache may and may not skip.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter
from collections.abc import Sequence

import pytest

from peer_ring.core import PeerRing
from peer_ring.core._hooks import DIGEST_BUCKETS
from peer_ring.core._sync import partition_root
from peer_ring.core._sync._roots import (
    ROOTS_SLICE,
    TURNS_BETWEEN_SLICES,
    RootCache,
    give_turns,
    in_slices,
)
from peer_ring.core.testing import MemoryCluster, fake_time_config, versioned_payload

ADDRS = [f"127.0.0.{i}:7101" for i in range(1, 4)]
#: Enough partitions for several slices per round.
P = 8 * ROOTS_SLICE

pytestmark = pytest.mark.fake_time


class Turns:
    """Counts event-loop turns: a task that only yields, bumping a counter each time."""

    def __init__(self) -> None:
        self.now = 0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            self.now += 1
            await asyncio.sleep(0)

    def __enter__(self) -> Turns:
        self._task = asyncio.ensure_future(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def record_digest_calls(node_app: object, turns: Turns, calls: Counter[int]) -> None:
    """Make ``node_app.digest_partition`` return one fixed non-empty digest per partition
    (the same on every node: the replicas are equal) and count its calls per loop turn."""

    def digest_partition(partition: int) -> Sequence[bytes]:
        calls[turns.now] += 1
        return [partition.to_bytes(4, "big")] + [b""] * (DIGEST_BUCKETS - 1)

    node_app.digest_partition = digest_partition  # type: ignore[attr-defined]


def gaps(calls: Counter[int]) -> list[int]:
    """Loop turns between consecutive turns that called the hook."""
    turns = sorted(calls)
    return [b - a for a, b in itertools.pairwise(turns)]


def sync_of(node: PeerRing) -> object:
    return node._sync  # the core's own tests drive a round directly


async def test_an_anti_entropy_round_yields_between_slices_on_both_sides(
    harness: MemoryCluster,
) -> None:
    harness.config = fake_time_config(P, replication=2, anti_entropy_batch=P)
    a, b = await harness.start_ready(ADDRS[:2])
    asking: Counter[int] = Counter()
    answering: Counter[int] = Counter()
    with Turns() as turns:
        record_digest_calls(harness.apps[a.address], turns, asking)
        record_digest_calls(harness.apps[b.address], turns, answering)
        ae = sync_of(a)._ae  # type: ignore[attr-defined]
        before = ae.partitions_compared
        await ae.round()
    # The whole batch was compared (every partition is on both nodes at N=2) ...
    assert ae.partitions_compared - before == P
    assert sum(asking.values()) == P and sum(answering.values()) == P
    # ... but never more than one slice of partitions in one turn of the loop, on either
    # side (before the slicing: all P in one turn on each side).
    assert max(asking.values()) <= ROOTS_SLICE, asking
    assert max(answering.values()) <= ROOTS_SLICE, answering
    assert len(asking) >= P // ROOTS_SLICE and len(answering) >= P // ROOTS_SLICE
    # Between two slices the rest of the node gets TURNS_BETWEEN_SLICES turns, not one: a
    # request arriving meanwhile runs its whole chain (read, dispatch, answer, writer) there.
    assert min(gaps(asking)) >= TURNS_BETWEEN_SLICES, asking
    assert min(gaps(answering)) >= TURNS_BETWEEN_SLICES, answering


async def test_a_request_chain_met_by_a_round_waits_for_at_most_one_slice(
    harness: MemoryCluster,
) -> None:
    """A task needing a few turns (as a request served over TCP does: about four on each
    side) started while an anti-entropy round runs sees at most one slice of the round on
    its side; with one turn between slices it waited for a slice before each turn."""
    harness.config = fake_time_config(P, replication=2, anti_entropy_batch=P)
    a, b = await harness.start_ready(ADDRS[:2])
    calls: Counter[int] = Counter()
    seen: list[int] = []
    with Turns() as turns:
        record_digest_calls(harness.apps[a.address], turns, calls)
        record_digest_calls(harness.apps[b.address], turns, Counter())
        ae = sync_of(a)._ae  # type: ignore[attr-defined]
        round_ = asyncio.ensure_future(ae.round())

        async def request() -> None:
            before = sum(calls.values())
            for _ in range(4):
                await asyncio.sleep(0)
            seen.append(sum(calls.values()) - before)

        while not round_.done():
            await request()
        await round_
    assert sum(calls.values()) == P
    assert len(seen) > P // ROOTS_SLICE
    assert max(seen) <= ROOTS_SLICE, seen
    # Most requests met no slice at all (the round's slices are 1 turn in 9).
    assert sorted(seen)[len(seen) // 2] == 0, seen


async def test_a_node_still_pulling_gives_one_turn_between_slices(harness: MemoryCluster) -> None:
    """Before its initial pull is over a node refuses the requests of the partitions it
    pulls anyway: its readiness comes first, one turn between slices (as before round 6)."""
    harness.config = fake_time_config(P, replication=2)
    a, _ = await harness.start_ready(ADDRS[:2])
    ctx = sync_of(a)._ctx  # type: ignore[attr-defined]
    assert ctx.slice_turns() == TURNS_BETWEEN_SLICES
    calls: Counter[int] = Counter()
    ctx.table.ready = False  # as during the initial pull
    try:
        assert ctx.slice_turns() == 1
        with Turns() as turns:
            record_digest_calls(harness.apps[a.address], turns, calls)
            await sync_of(a)._puller.round(list(range(P)))  # type: ignore[attr-defined]
    finally:
        ctx.table.ready = True
    assert sum(calls.values()) == P
    assert max(calls.values()) <= ROOTS_SLICE, calls
    assert min(gaps(calls)) == 1, calls


async def test_give_turns_gives_the_loop_that_many_turns() -> None:
    assert TURNS_BETWEEN_SLICES >= 4  # the turns a TCP request needs on one side
    with Turns() as turns:
        await asyncio.sleep(0)
        start = turns.now
        await give_turns()
        assert turns.now - start == TURNS_BETWEEN_SLICES
        await give_turns(3)
        assert turns.now - start == TURNS_BETWEEN_SLICES + 3


async def test_a_pull_round_yields_between_slices(harness: MemoryCluster) -> None:
    harness.config = fake_time_config(P, replication=2)
    a, _ = await harness.start_ready(ADDRS[:2])
    asking: Counter[int] = Counter()
    with Turns() as turns:
        record_digest_calls(harness.apps[a.address], turns, asking)
        await sync_of(a)._puller.round(list(range(P)))  # type: ignore[attr-defined]
    assert sum(asking.values()) == P
    assert max(asking.values()) <= ROOTS_SLICE, asking
    assert min(gaps(asking)) >= TURNS_BETWEEN_SLICES, asking


async def test_anti_entropy_still_repairs_a_change_made_after_roots_were_cached(
    harness: MemoryCluster,
) -> None:
    harness.config = fake_time_config(32, replication=2, anti_entropy_batch=32)
    a, b = await harness.start_ready(ADDRS[:2])
    app_a, app_b = harness.apps[a.address], harness.apps[b.address]
    for i in range(40):
        key = f"k{i}".encode()
        app_a.merge(key, 1, b"v")
        app_b.merge(key, 1, b"v")
    ae_a = sync_of(a)._ae  # type: ignore[attr-defined]
    await ae_a.round()  # equal replicas: roots computed and cached on both sides
    cache = sync_of(a)._ctx.roots  # type: ignore[attr-defined]
    assert len(cache) > 0
    # Diverge behind the core's back (as a lost write would): only b has the new version.
    app_b.merge(b"k7", 2, b"newer")
    app_b.merge(b"fresh", 1, b"only-b")
    await ae_a.round()
    assert app_a.data[b"k7"] == (2, b"newer")
    assert app_a.data[b"fresh"] == (1, b"only-b")
    # A replicated write (the normal path) is seen too.
    await a.execute("app", app_a.PUT, b"k8", versioned_payload(5, b"x"), quorum=1)
    app_a.data[b"k8"] = (5, b"x")
    await ae_a.round()
    assert app_b.data[b"k8"] == (5, b"x")


def _digests(rng: random.Random, namespaces: Sequence[str]) -> dict[str, list[bytes]]:
    return {
        ns: [rng.randbytes(8) if rng.random() < 0.1 else b"" for _ in range(DIGEST_BUCKETS)]
        for ns in namespaces
    }


def test_root_cache_returns_partition_root_and_reuses_only_equal_digests() -> None:
    rng = random.Random(3)
    cache = RootCache()
    for _ in range(300):
        p = rng.randrange(8)
        digests = _digests(rng, rng.choice([["kv"], ["a", "b"], []]))
        assert cache.root(p, digests) == partition_root(digests)
        again = {ns: list(ds) for ns, ds in digests.items()}
        hits = cache.hits
        assert cache.root(p, again) == partition_root(digests)
        assert cache.hits == hits + (1 if partition_root(digests) else 0)


def test_root_cache_is_not_fooled_by_a_list_changed_in_place_or_an_emptied_partition() -> None:
    cache = RootCache()
    buckets = [b"x"] + [b""] * (DIGEST_BUCKETS - 1)
    first = cache.root(1, {"kv": buckets})
    buckets[5] = b"y"  # the hook hands back the same list, changed
    assert cache.root(1, {"kv": buckets}) == partition_root({"kv": buckets}) != first
    assert cache.root(1, {"kv": [b""] * DIGEST_BUCKETS}) == 0
    assert len(cache) == 0  # empty partitions are not kept
    cache.root(2, {"kv": buckets})
    cache.forget(2)
    assert len(cache) == 0


async def test_a_handoff_round_drops_partitions_a_slice_per_turn(harness: MemoryCluster) -> None:
    harness.config = fake_time_config(P, replication=1)
    a, _ = await harness.start_ready(ADDRS[:2])
    app = harness.apps[a.address]
    drops: Counter[int] = Counter()
    with Turns() as turns:
        drop = app.drop_partition

        def counting_drop(partition: int) -> None:
            drops[turns.now] += 1
            drop(partition)

        app.drop_partition = counting_drop  # type: ignore[method-assign]
        sync = sync_of(a)
        # Every partition this node does not replicate holds nothing here: each is dropped.
        not_mine = [p for p in range(P) if p not in sync._ctx.table.replicated]  # type: ignore[attr-defined]
        await sync._handoff.round(list(range(P)))  # type: ignore[attr-defined]
    assert len(not_mine) > 2 * ROOTS_SLICE
    assert sum(drops.values()) == len(not_mine)
    assert max(drops.values()) <= ROOTS_SLICE, drops
    assert min(gaps(drops)) >= TURNS_BETWEEN_SLICES, drops


async def test_in_slices_pauses_after_each_full_slice_only() -> None:
    pauses: list[int] = []
    seen: list[int] = []

    async def pause() -> None:
        pauses.append(len(seen))

    async for item in in_slices(range(100), 32, pause=pause):
        seen.append(item)
    assert seen == list(range(100))
    assert pauses == [32, 64, 96]  # never before the first item, never mid-slice


def test_root_cache_counts_its_hits_and_misses() -> None:
    cache = RootCache()
    assert (cache.hits, cache.misses) == (0, 0)
    one = {"kv": [b"x"] + [b""] * (DIGEST_BUCKETS - 1)}
    two = {"kv": [b"y"] + [b""] * (DIGEST_BUCKETS - 1)}
    cache.root(1, one)
    assert (cache.hits, cache.misses) == (0, 1)
    cache.root(2, two)
    assert (cache.hits, cache.misses) == (0, 2)
    cache.root(1, one)
    assert (cache.hits, cache.misses) == (1, 2)
