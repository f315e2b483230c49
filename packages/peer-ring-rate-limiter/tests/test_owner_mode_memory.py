"""Owner mode on in-memory clusters: exactness, batching, replication, bad input."""

from __future__ import annotations

import asyncio
import random

import pytest

from peer_ring.core.testing import FakeClock
from peer_ring.ratelimit import (
    Decision,
    InvalidCostError,
    KeyTooLongError,
    Limit,
    RateLimiter,
    RateLimitError,
)

WINDOW = Limit(100, 60.0, algorithm="fixed_window")


async def hammer(limiters: list[RateLimiter], key: str, limit: Limit, n: int) -> list[Decision]:
    rng = random.Random(7)
    return await asyncio.gather(*(rng.choice(limiters).hit(key, limit) for _ in range(n)))


@pytest.mark.parametrize(
    "algo",
    [
        "fixed_window",
        "sliding_window_log",
        "sliding_window_counter",
        "token_bucket",
        "gcra",
        "leaky_bucket",
    ],
)
async def test_10k_concurrent_hits_from_5_nodes_admit_exactly_100(
    cluster: list[RateLimiter], algo: str
) -> None:
    limit = Limit(100, 60.0, algorithm=algo)
    decisions = await hammer(cluster, "api:user:7", limit, 10_000)
    assert sum(d.allowed for d in decisions) == 100
    assert all(d.source == "owner" for d in decisions)
    denied = [d for d in decisions if not d.allowed]
    assert all(d.remaining == 0 and d.retry_after > 0 for d in denied)
    # Forwarded hits travelled in batches: far fewer requests than hits.
    forwarded = sum(rl.stats()["forwarded"] for rl in cluster)
    batches = sum(rl.stats()["batches"] for rl in cluster)
    assert forwarded >= 7000 and batches <= forwarded / 50


async def test_every_replica_holds_the_state_before_the_answer(cluster: list[RateLimiter]) -> None:
    key = "k:replicated"
    d = await cluster[0].hit(key, WINDOW, 30)
    assert d.allowed and d.remaining == 70
    replicas = cluster[0].node.preference_list(key.encode(), 2)
    holders = [rl for rl in cluster if rl.node.address in replicas]
    assert len(holders) == 2
    assert all(rl.store.get(key.encode()) is not None for rl in holders)
    assert {rl.store.get(key.encode()).seq for rl in holders} == {1}  # type: ignore[union-attr]


@pytest.mark.parametrize("cluster", [{"replication": 3}], indirect=True)
async def test_three_replicas_hold_each_state_before_the_answer(
    cluster: list[RateLimiter],
) -> None:
    # Two other replicas per key: the decision waits for both (concurrent hits, batched).
    keys = [f"k3:{i}" for i in range(20)]
    out = await asyncio.gather(*(cluster[i % 5].hit(k, WINDOW, 3) for i, k in enumerate(keys)))
    assert all(d.allowed and d.remaining == 97 for d in out)
    for k in keys:
        replicas = cluster[0].node.preference_list(k.encode(), 3)
        held = [rl.store.get(k.encode()) for rl in cluster if rl.node.address in replicas]
        assert len(held) == 3 and all(e is not None and e.seq == 1 for e in held)
    await cluster[4].reset(keys[0])
    replicas = cluster[0].node.preference_list(keys[0].encode(), 3)
    tomb = [rl.store.get(keys[0].encode()) for rl in cluster if rl.node.address in replicas]
    assert all(e is not None and e.seq == 2 and e.state is None for e in tomb)


async def test_peek_refund_reset_and_changed_limit(cluster: list[RateLimiter]) -> None:
    a, b = cluster[0], cluster[3]
    assert (await a.hit("u", WINDOW, 60)).remaining == 40
    assert (await b.peek("u", WINDOW)).remaining == 40
    assert (await b.refund("u", WINDOW, 10)).remaining == 50
    bigger = Limit(200, 60.0, algorithm="fixed_window")
    assert (await a.hit("u", bigger, 0)).remaining == 150
    await b.reset("u")
    assert (await a.peek("u", WINDOW)).remaining == 100


async def test_windows_follow_the_owners_clock(
    cluster: list[RateLimiter], clock: FakeClock
) -> None:
    limit = Limit(3, 10.0, algorithm="fixed_window")
    assert [(await cluster[1].hit("w", limit)).allowed for _ in range(4)] == [True] * 3 + [False]
    await clock.advance_async(10.0)
    assert (await cluster[2].hit("w", limit)).allowed


async def test_bad_input_raises_typed_errors_and_the_node_keeps_running(
    cluster: list[RateLimiter],
) -> None:
    rl = cluster[0]
    with pytest.raises(KeyTooLongError):
        await rl.hit("x" * 2000, WINDOW)
    with pytest.raises(InvalidCostError):
        await rl.hit("k", WINDOW, 1.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidCostError):
        await rl.hit("k", WINDOW, 1 << 50)
    with pytest.raises(RateLimitError):
        await rl.hit("k", "100/s")  # type: ignore[arg-type]
    # A malformed peer request fails that request only.
    from peer_ring.core import PeerRingError

    other = cluster[1].node.address
    for junk in (b"", b"\x01", b"\xff" * 40, b"\x01\x01" + b"\x00" * 30):
        with pytest.raises(PeerRingError):
            await rl.node.call(other, "ratelimit", "hit", b"k", junk)
        with pytest.raises(PeerRingError):
            await rl.node.call(other, "ratelimit", "state", b"k", junk)
    assert (await rl.hit("k", WINDOW)).allowed
