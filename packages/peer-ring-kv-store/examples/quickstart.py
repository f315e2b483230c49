"""The README's five lines, against three local nodes.

Run one node per process (what a real deployment does):

    python quickstart.py 127.0.0.1:7101 &   # waits for the others
    python quickstart.py 127.0.0.2:7101 &
    python quickstart.py 127.0.0.3:7101

or all three in this one process (what the test does):

    python quickstart.py --all [port]
"""

from __future__ import annotations

import asyncio
import sys

from peer_ring.discovery.static import StaticDiscovery
from peer_ring.kv import KVStore


def peers(port: int) -> list[str]:
    return [f"127.0.0.{i}:{port}" for i in (1, 2, 3)]


async def node(self_address: str, port: int, first: bool) -> None:
    discovery = StaticDiscovery(peers=peers(port), self_address=self_address)
    async with KVStore(discovery=discovery, replication=3) as kv:
        await kv.wait_ready(timeout=60)  # joined and pulled its partitions
        if first:
            await kv.set("user:1", b"alice", ttl=30.0, quorum=2)
            assert await kv.get("user:1", quorum=2) == b"alice"
            await kv.set("user:2", {"name": "bob", "visits": 3})
            print("user:2 =", await kv.get("user:2"))
            await kv.delete("user:1")
            assert await kv.get("user:1") is None
            print("ok")


async def all_in_one(port: int) -> None:
    stores = [KVStore(StaticDiscovery(peers(port), self_address=a)) for a in peers(port)]
    for store in stores:
        await store.start()
    try:
        await asyncio.gather(*(store.wait_ready(timeout=60) for store in stores))
        kv = stores[0]
        await kv.set("user:1", b"alice", ttl=30.0, quorum=2)
        assert await stores[1].get("user:1", quorum=2) == b"alice"
        await kv.set("user:2", {"name": "bob", "visits": 3})
        print("user:2 =", await stores[2].get("user:2"))
        await kv.delete("user:1")
        assert await stores[2].get("user:1", quorum=2) is None
        print("ok")
    finally:
        for store in stores:
            await store.stop()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--all"]:
        asyncio.run(all_in_one(int(sys.argv[2]) if len(sys.argv) > 2 else 7101))
    else:
        address = sys.argv[1]
        port = int(address.rsplit(":", 1)[1])
        asyncio.run(node(address, port, address == peers(port)[0]))
