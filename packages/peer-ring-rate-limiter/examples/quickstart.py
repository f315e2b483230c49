"""Quick start: three rate limiter nodes on 127.0.0.1, .2 and .3 (real gRPC).

Run one node per process (``python quickstart.py 127.0.0.2 7201``) or, to try it alone,
all three in this process: ``python quickstart.py --all 7201``.
"""

from __future__ import annotations

import asyncio
import sys

from peer_ring.discovery.static import StaticDiscovery
from peer_ring.ratelimit import Limit, RateLimiter


async def main(port: int) -> None:
    peers = [f"127.0.0.{i}:{port}" for i in (1, 2, 3)]
    nodes = [RateLimiter(discovery=StaticDiscovery(peers, self_address=p)) for p in peers]
    for rl in nodes:
        await rl.start()
    await asyncio.gather(*(rl.node.wait_ready(30) for rl in nodes))
    try:
        per_user = Limit.per_minute(5, algorithm="sliding_window_log", name="per-user")
        decisions = [await nodes[i % 3].hit("api:user:7", per_user) for i in range(7)]
        print("allowed:", [d.allowed for d in decisions])  # 5 x True, then False
        d = decisions[-1]
        print(f"remaining={d.remaining} retry_after={d.retry_after:.0f}s")
        burst = Limit.per_second(100, burst=20)  # token bucket: 20 at once, 100/s sustained
        hits = [nodes[i % 3].hit("api:ip:10.0.0.1", burst) for i in range(25)]
        ok = sum(d.allowed for d in await asyncio.gather(*hits))
        print("burst admitted:", ok)  # 20, plus what refilled meanwhile (100/s)
        await nodes[2].reset("api:user:7")
        print("after reset:", (await nodes[1].peek("api:user:7", per_user)).remaining)
    finally:
        for rl in nodes:
            await rl.stop()
    print("ok")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[-1]) if len(sys.argv) > 1 else 7201))
