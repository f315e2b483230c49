"""Three peer-ring nodes in one process over real gRPC on loopback.

Run:  python packages/peer-ring-core/examples/three_nodes.py [base_port]

Each node registers a tiny "counter" application: ``incr`` adds the payload to a per-key
counter and returns the new value. The coordinator runs it on the key's 3 replicas and
returns once 2 of them answered; every replica's reply is available for reconciliation.
"""

from __future__ import annotations

import asyncio
import sys
from collections import defaultdict

from peer_ring.core import Command, CommandContext, PeerRing, PeerRingConfig
from peer_ring.discovery.static import StaticDiscovery

#: Increments are not idempotent: never stored as a hint to be replayed.
INCR = Command("incr", mutates=True, hinted=False)


def counter_app(node: PeerRing) -> dict[bytes, int]:
    counts: dict[bytes, int] = defaultdict(int)

    def incr(ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        counts[key] += int(payload)
        return str(counts[key]).encode()

    node.register("counter", INCR, incr)
    return counts


async def main(base_port: int) -> None:
    peers = [f"127.0.0.1:{base_port + i}" for i in range(3)]
    config = PeerRingConfig(replication=3, quorum=2)
    nodes = [PeerRing(StaticDiscovery(peers, self_address=p), config=config) for p in peers]
    stores = [counter_app(node) for node in nodes]
    for node in nodes:
        await node.start()
    try:
        result = await nodes[0].execute("counter", INCR, "visits", b"5", quorum=2)
        print("replicas:", result.preference_list)
        print("first quorum replies:", [(r.node, r.payload) for r in result.ok_replies])
        replies = await result.all_replies()
        print("all replies:", sorted((r.node, r.payload) for r in replies))
        assert all(s[b"visits"] == 5 for s in stores)
    finally:
        for node in nodes:
            await node.stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 7101))
