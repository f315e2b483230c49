"""Cookbook: one rate limit for a whole cluster with peer-ring-rate-limiter.

Each key is decided by its owner node, so the limit holds across every replica of the
service: 5 requests per minute per user means 5, whichever replica the requests reach.

    python rate_limiting.py [port]      # three nodes in this process, real gRPC on 127.0.0.1-3
"""

from __future__ import annotations

import asyncio
import sys

from peer_ring.discovery.static import StaticDiscovery
from peer_ring.ratelimit import Limit, RateLimiter

PER_USER = Limit.per_minute(5, name="api-per-user")


async def handle_request(rl: RateLimiter, user: str) -> int:
    """What a request handler does: 429 when the user is over the limit."""
    decision = await rl.hit(f"api:user:{user}", PER_USER)
    return 200 if decision.allowed else 429


async def main(port: int) -> None:
    peers = [f"127.0.0.{i}:{port}" for i in (1, 2, 3)]
    nodes = [RateLimiter(discovery=StaticDiscovery(peers, self_address=p)) for p in peers]
    await asyncio.gather(*(rl.start() for rl in nodes))
    try:
        await asyncio.gather(*(rl.node.wait_ready(60) for rl in nodes))
        # 12 requests of one user spread over the three replicas, concurrently.
        codes = await asyncio.gather(*(handle_request(nodes[i % 3], "7") for i in range(12)))
        assert codes.count(200) == 5 and codes.count(429) == 7, codes
        # Another user has its own allowance.
        assert await handle_request(nodes[1], "8") == 200
        d = await nodes[2].peek("api:user:7", PER_USER)
        assert not d.allowed and d.remaining == 0 and d.retry_after > 0
        await nodes[0].reset("api:user:7")  # e.g. an operator lifts the limit
        assert await handle_request(nodes[2], "7") == 200
        print("rate limiting ok")
    finally:
        await asyncio.gather(*(rl.stop() for rl in nodes))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 7303))
