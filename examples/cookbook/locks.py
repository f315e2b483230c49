"""Cookbook: a lock with a TTL (a lease), held by one process of the cluster at a time.

- acquire: ``set_if_absent(key, token, ttl)``: exactly one caller stores its token.
- renew: ``compare_and_set`` with the version read back, only while the token is still ours.
- release: there is no conditional delete, so a ``compare_and_set`` to a marker that expires
  at once releases the lock atomically (a plain ``delete`` after checking the token could
  remove a lock someone else acquired in between).
- a holder that dies simply lets the TTL run out.

A lease is not a fence: a holder paused longer than the TTL may still act after losing it.
Protect the resource itself with the token when that matters.

    python locks.py [port]      # three nodes in this process, real gRPC on 127.0.0.1-3
"""

from __future__ import annotations

import asyncio
import secrets
import sys

from peer_ring.discovery.static import StaticDiscovery
from peer_ring.kv import KVStore


async def acquire(kv: KVStore, name: str, ttl: float) -> str | None:
    """A token if this caller now holds ``name``, else None."""
    token = secrets.token_hex(8)
    return token if await kv.set_if_absent(f"lock:{name}", token, ttl=ttl) else None


async def renew(kv: KVStore, name: str, token: str, ttl: float) -> bool:
    """Extend the lease, only if ``token`` still holds it."""
    current = await kv.get_versioned(f"lock:{name}")
    if current is None or current[0] != token:
        return False
    return await kv.compare_and_set(f"lock:{name}", token, version=current[1], ttl=ttl)


async def release(kv: KVStore, name: str, token: str) -> bool:
    """Release the lock, only if ``token`` still holds it."""
    current = await kv.get_versioned(f"lock:{name}")
    if current is None or current[0] != token:
        return False
    return await kv.compare_and_set(f"lock:{name}", "", version=current[1], ttl=0.001)


async def main(port: int) -> None:
    peers = [f"127.0.0.{i}:{port}" for i in (1, 2, 3)]
    nodes = [KVStore(StaticDiscovery(peers, self_address=p), replication=3) for p in peers]
    await asyncio.gather(*(kv.start() for kv in nodes))
    try:
        await asyncio.gather(*(kv.wait_ready(60) for kv in nodes))
        # Ten contenders on three nodes at once: exactly one wins.
        tokens = await asyncio.gather(
            *(acquire(nodes[i % 3], "nightly-job", ttl=30.0) for i in range(10))
        )
        winners = [t for t in tokens if t is not None]
        assert len(winners) == 1, tokens
        token = winners[0]
        assert await renew(nodes[1], "nightly-job", token, ttl=30.0)
        assert not await release(nodes[2], "nightly-job", "not-the-token")
        assert await acquire(nodes[2], "nightly-job", ttl=30.0) is None  # still held
        assert await release(nodes[0], "nightly-job", token)
        for _ in range(50):  # bounded: the release marker expires within milliseconds
            if (second := await acquire(nodes[2], "nightly-job", ttl=0.3)) is not None:
                break
            await asyncio.sleep(0.02)
        assert second is not None  # free again after the release
        # A holder that never releases: the lease runs out by itself.
        for _ in range(50):
            if (third := await acquire(nodes[1], "nightly-job", ttl=30.0)) is not None:
                break
            await asyncio.sleep(0.1)
        assert third is not None and not await renew(nodes[2], "nightly-job", second, ttl=5)
        print("locks ok")
    finally:
        await asyncio.gather(*(kv.stop(graceful=False) for kv in nodes))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 7302))
