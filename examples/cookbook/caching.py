"""Cookbook: a read-through cache with a TTL, shared by every replica of a service.

``cached()`` returns the value stored under the key, or computes it, stores it with a TTL
and returns it. Any node reads what another computed; the store expires entries itself.

    python caching.py [port]      # three nodes in this process, real gRPC on 127.0.0.1-3
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from peer_ring.discovery.static import StaticDiscovery
from peer_ring.kv import KVStore


async def cached(kv: KVStore, key: str, compute: Callable[[], Awaitable[Any]], ttl: float) -> Any:
    """The cached value of ``key``, computed (once per TTL, per concurrent miss) if absent."""
    value = await kv.get(key)
    if value is None:
        value = await compute()
        await kv.set(key, value, ttl=ttl)
    return value


async def main(port: int) -> None:
    peers = [f"127.0.0.{i}:{port}" for i in (1, 2, 3)]
    nodes = [KVStore(StaticDiscovery(peers, self_address=p), replication=3) for p in peers]
    await asyncio.gather(*(kv.start() for kv in nodes))
    try:
        await asyncio.gather(*(kv.wait_ready(60) for kv in nodes))
        calls = 0

        async def expensive_report() -> dict[str, int]:
            nonlocal calls
            calls += 1
            return {"orders": 1234}

        first = await cached(nodes[0], "report:today", expensive_report, ttl=0.5)
        again = await cached(nodes[2], "report:today", expensive_report, ttl=0.5)
        assert first == again == {"orders": 1234} and calls == 1  # computed once
        remaining = await nodes[1].ttl("report:today")
        assert remaining is not None and 0 < remaining <= 0.5
        for _ in range(50):  # bounded: the entry expires after 0.5 s
            if await nodes[1].get("report:today") is None:
                break
            await asyncio.sleep(0.1)
        await cached(nodes[1], "report:today", expensive_report, ttl=0.5)
        assert calls == 2  # expired, so computed again
        print("caching ok")
    finally:
        await asyncio.gather(*(kv.stop(graceful=False) for kv in nodes))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 7301))
