"""The ``limits`` storage backends (``peerring://``, ``async+peerring://``) with limits'
own strategies, over real gRPC (sync) and the in-memory network (async)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

limits = pytest.importorskip("limits", reason="the limits extra is not installed")

from limits import parse  # noqa: E402
from limits.aio import strategies as aio_strategies  # noqa: E402
from limits.storage import storage_from_string  # noqa: E402
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter  # noqa: E402

from peer_ring.core.testing import free_port  # noqa: E402
from peer_ring.ratelimit import RateLimiter  # noqa: E402
from peer_ring.ratelimit.limits_storage import (  # noqa: E402
    AsyncPeerRingStorage,
    PeerRingStorage,
)

HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")


@pytest.fixture(scope="module")
def storages() -> Iterator[list[PeerRingStorage]]:
    port = free_port(*HOSTS)
    peers = ",".join(f"{h}:{port}" for h in HOSTS)
    made: list[PeerRingStorage] = []
    threads = []

    def boot(host: str) -> None:
        made.append(storage_from_string(f"peerring://{host}:{port}?peers={peers}&replication=2"))  # type: ignore[arg-type]

    # The nodes wait for each other to be ready: start them concurrently.
    for h in HOSTS:
        threads.append(threading.Thread(target=boot, args=(h,)))
        threads[-1].start()
    for t in threads:
        t.join(60)
    assert len(made) == 3 and all(isinstance(s, PeerRingStorage) for s in made)
    yield made
    for s in made:
        s.close()


def hammer(strategies: list[object], item: object, key: str, per_thread: int) -> int:
    admitted = []
    lock = threading.Lock()

    def run(strategy: FixedWindowRateLimiter) -> None:
        ok = sum(strategy.hit(item, key) for _ in range(per_thread))  # type: ignore[arg-type]
        with lock:
            admitted.append(ok)

    threads = [threading.Thread(target=run, args=(s,)) for s in strategies for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return sum(admitted)


@pytest.mark.parametrize("strategy", [FixedWindowRateLimiter, MovingWindowRateLimiter])
def test_limits_strategies_are_exact_across_three_nodes(
    storages: list[PeerRingStorage], strategy: type[FixedWindowRateLimiter]
) -> None:
    item = parse("10/minute")
    key = f"user-{strategy.__name__}"
    limiters = [strategy(s) for s in storages]
    assert hammer(limiters, item, key, 15) == 10
    for rl in limiters:
        assert not rl.test(item, key)
        stats = rl.get_window_stats(item, key)
        assert stats.remaining == 0 and stats.reset_time > 0
    limiters[0].clear(item, key)
    assert limiters[1].test(item, key) and limiters[2].get_window_stats(item, key).remaining == 10


def test_counter_and_expiry(storages: list[PeerRingStorage]) -> None:
    import time

    a, b, _ = storages
    assert a.incr("c", 30, 3) == 3 and b.incr("c", 30, 2) == 5
    assert b.get("c") == 5
    assert 25 < a.get_expiry("c") - time.time() <= 30
    assert a.check() and b.check()


async def test_async_strategies_on_a_shared_limiter(cluster: list[RateLimiter]) -> None:
    item = parse("7/hour")
    stores = [storage_from_string("async+peerring://", limiter=rl) for rl in cluster]
    assert all(isinstance(s, AsyncPeerRingStorage) for s in stores)
    for cls in (aio_strategies.FixedWindowRateLimiter, aio_strategies.MovingWindowRateLimiter):
        strategies = [cls(s) for s in stores]  # type: ignore[arg-type]
        key = f"aio-{cls.__name__}"
        hits = await asyncio.gather(*(strategies[i % 5].hit(item, key) for i in range(100)))
        assert sum(hits) == 7
        assert (await strategies[3].get_window_stats(item, key)).remaining == 0
