"""Global mode's over-admission bound and the fail policies (in-memory network)."""

from __future__ import annotations

import asyncio
import math

import pytest

from peer_ring.core import PeerRingConfig
from peer_ring.core.testing import FakeClock, MemoryNetwork, settle_loop
from peer_ring.ratelimit import Limit, OwnerUnavailableError, RateLimiter


async def drive(
    cluster: list[RateLimiter],
    clock: FakeClock,
    key: str,
    limit: Limit,
    *,
    seconds: float,
    per_step: int,
    step: float = 0.01,
) -> int:
    """Every node hits ``per_step`` times per ``step`` of fake time; returns admissions."""
    admitted = 0
    for _ in range(round(seconds / step)):
        out = await asyncio.gather(
            *(rl.hit(key, limit, mode="global") for rl in cluster for _ in range(per_step))
        )
        admitted += sum(d.allowed for d in out)
        await clock.advance_async(step, settle=30)
    return admitted


@pytest.mark.parametrize("cluster", [{"nodes": 3}], indirect=True)
@pytest.mark.parametrize(
    ("limit", "seconds", "exact"),
    [
        (Limit(100, 60.0, algorithm="fixed_window"), 3.0, 100),
        (Limit(1000, 1.0, algorithm="token_bucket"), 3.0, 1000 + 1000 * 3.0),
        (Limit(500, 1.0, algorithm="gcra"), 2.0, 500 + 500 * 2.0),
    ],
    ids=["window-100-per-60s", "bucket-1000-per-s", "gcra-500-per-s"],
)
async def test_global_mode_stays_within_its_bound(
    cluster: list[RateLimiter], clock: FakeClock, limit: Limit, seconds: float, exact: float
) -> None:
    sync = cluster[0]._global
    allowance = sync.allowance(limit)
    admitted = await drive(cluster, clock, "hot", limit, seconds=seconds, per_step=20)
    bound = (len(cluster) - 1) * allowance
    assert exact - bound <= admitted <= exact + bound, (admitted, exact, bound)
    # Decided locally: nothing was forwarded to the owner hit by hit.
    assert sum(rl.stats()["forwarded"] for rl in cluster) == 0
    assert sum(rl.stats()["global_syncs"] for rl in cluster) > 0


@pytest.mark.parametrize("cluster", [{"nodes": 3}], indirect=True)
async def test_global_copies_converge_to_the_owner(
    cluster: list[RateLimiter], clock: FakeClock
) -> None:
    limit = Limit(50, 60.0, algorithm="fixed_window")
    for rl in cluster:
        await rl.hit("k", limit, 5, mode="global")
    for _ in range(5):
        await clock.advance_async(0.1, settle=40)
    peeks = [await rl.hit("k", limit, 0, mode="global") for rl in cluster]
    assert [p.remaining for p in peeks] == [35, 35, 35]


async def partitioned(
    make_limiter: object, network: MemoryNetwork, policy: str, **kw: object
) -> tuple[RateLimiter, str]:
    from peer_ring.core.testing import FixedDiscovery  # noqa: F401

    members = [f"127.0.0.{i}:7401" for i in range(1, 4)]
    nodes = [make_limiter(a, members, fail_policy=policy, timeout=0.2, **kw) for a in members]  # type: ignore[operator]
    for rl in nodes:
        await rl.start()
    await asyncio.gather(*(rl.node.wait_ready() for rl in nodes))
    await settle_loop()
    me = nodes[0]
    # A key owned by another node, whose owner then stops answering.
    key = next(
        f"k{i}"
        for i in range(1000)
        if me.node.preference_list(f"k{i}".encode(), 1)[0] != me.node.address
    )
    network.pause(me.node.preference_list(key.encode(), 1)[0])
    return me, key


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("fail-open", 10), ("fail-closed", 0), ("local-estimate", math.ceil(30 / 3))],
)
async def test_fail_policies_when_the_owner_is_unreachable(
    make_limiter: object, network: MemoryNetwork, clock: FakeClock, policy: str, expected: int
) -> None:
    me, key = await partitioned(make_limiter, network, policy)
    limit = Limit(30, 60.0, algorithm="fixed_window")
    hits = [
        asyncio.ensure_future(me.hit(key, limit))
        for _ in range(10 if policy != "local-estimate" else 20)
    ]
    await settle_loop()
    await clock.advance_async(0.3, settle=40)
    out = await asyncio.gather(*hits)
    assert sum(d.allowed for d in out) == expected
    assert {d.source for d in out} == {policy}
    assert me.stats()["owner_unavailable"] == len(hits)


async def test_local_estimate_keeps_its_allowance_for_the_whole_window(
    make_limiter: object, network: MemoryNetwork, clock: FakeClock
) -> None:
    # The owner stays unreachable for 49 s of a 60 s window, across three runs of the
    # sweeper (every 15 s): this node admits its fair share once, not once per sweep.
    config = PeerRingConfig(partitions=64, request_timeout=1.0, down_after=None)
    me, key = await partitioned(make_limiter, network, "local-estimate", config=config)
    limit = Limit(30, 60.0, algorithm="fixed_window")
    admitted = 0
    for _ in range(4):
        hits = [asyncio.ensure_future(me.hit(key, limit)) for _ in range(20)]
        await settle_loop()
        await clock.advance_async(0.3, settle=40)
        out = await asyncio.gather(*hits)
        assert {d.source for d in out} == {"local-estimate"}
        admitted += sum(d.allowed for d in out)
        await clock.advance_async(12.0, settle=40)
    assert admitted == math.ceil(30 / 3)
    # A new window: a new fair share.
    await clock.advance_async(15.0, settle=40)
    hits = [asyncio.ensure_future(me.hit(key, limit)) for _ in range(20)]
    await settle_loop()
    await clock.advance_async(0.3, settle=40)
    assert sum(d.allowed for d in await asyncio.gather(*hits)) == 10


async def test_fail_policy_raise(
    make_limiter: object, network: MemoryNetwork, clock: FakeClock
) -> None:
    me, key = await partitioned(make_limiter, network, "raise")
    fut = asyncio.ensure_future(me.hit(key, Limit.per_second(5)))
    await settle_loop()
    await clock.advance_async(0.3, settle=40)
    with pytest.raises(OwnerUnavailableError):
        await fut


async def test_global_bound_holds_with_a_round_trip_of_10ms(clock: FakeClock) -> None:
    """The same bound on a network whose messages take 5 ms each way (RTT = rtt_budget)."""
    from peer_ring.core import PeerRingConfig
    from peer_ring.core.testing import FixedDiscovery

    network = MemoryNetwork(clock, latency=0.005)
    members = [f"127.0.0.{i}:7501" for i in range(1, 4)]
    nodes = [
        RateLimiter(
            FixedDiscovery(a, members),
            replication=2,
            config=PeerRingConfig(partitions=64, request_timeout=1.0),
            transport=network.transport(a),
            clock=clock,
            rtt_budget=0.01,
        )
        for a in members
    ]
    for rl in nodes:
        await rl.start()
    ready = asyncio.gather(*(rl.node.wait_ready() for rl in nodes))
    while not ready.done():
        await clock.advance_async(0.01, settle=30)
    await ready
    try:
        limit = Limit(1000, 1.0, algorithm="token_bucket")
        allowance = nodes[0]._global.allowance(limit)
        assert allowance == 110  # ceil(1000/s x (0.1 s + 0.01 s))
        # The hits of one step are answered after the network's delays: count them as they
        # complete while the fake clock runs.
        admitted = 0
        first = last = clock.monotonic()
        for _ in range(200):
            batch = [
                asyncio.ensure_future(rl.hit("hot", limit, mode="global"))
                for rl in nodes
                for _ in range(20)
            ]
            last = clock.monotonic()
            for _ in range(100):  # bounded: a hit waits for at most a few round trips
                await clock.advance_async(0.005, settle=30)
                if all(f.done() for f in batch):
                    break
            admitted += sum(f.result().allowed for f in batch)
        exact = limit.capacity + limit.rate * (last - first)
        bound = (len(nodes) - 1) * allowance
        assert exact - bound <= admitted <= exact + bound, (admitted, exact, bound)
    finally:
        for rl in nodes:
            await rl.stop()


async def test_the_backlog_behind_an_unanswered_batch_gets_the_fail_policy_at_once(
    make_limiter: object, network: MemoryNetwork, clock: FakeClock
) -> None:
    # 600 hits, batches of at most 100: the first batch times out (0.2 s), and the 500
    # hits queued behind it fail with it instead of waiting one timeout per batch.
    me, key = await partitioned(make_limiter, network, "fail-closed", max_batch_size=100)
    limit = Limit(30, 60.0, algorithm="fixed_window")
    hits = [asyncio.ensure_future(me.hit(key, limit)) for _ in range(600)]
    await settle_loop()
    await clock.advance_async(0.25, settle=40)
    assert all(h.done() for h in hits)
    out = await asyncio.gather(*hits)
    assert {d.source for d in out} == {"fail-closed"} and not any(d.allowed for d in out)
    stats = me.stats()
    assert stats["batches"] == 1 and stats["max_batch"] == 100
    assert stats["owner_unavailable"] == 600
