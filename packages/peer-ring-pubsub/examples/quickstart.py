"""The README's example against three local nodes (real gRPC on 127.0.0.1/.2/.3).

Run one node per process (what a real deployment does):

    python quickstart.py 127.0.0.1:7201 &   # waits for the others
    python quickstart.py 127.0.0.2:7201 &
    python quickstart.py 127.0.0.3:7201

or all three in this one process (what the test does):

    python quickstart.py --all [port]
"""

from __future__ import annotations

import asyncio
import sys

from peer_ring.discovery.static import StaticDiscovery
from peer_ring.pubsub import PubSub


def peers(port: int) -> list[str]:
    return [f"127.0.0.{i}:{port}" for i in (1, 2, 3)]


async def example(ps: PubSub, consumer: PubSub) -> None:
    orders = ps.topic("orders", partitions=16, max_messages=1_000_000, max_age=3600.0)
    r = await orders.publish(b"order 42: 2 books", key="user:7", msg_id="order-42")
    print(f"stored at partition {r.partition}, offset {r.offset}, duplicate={r.duplicate}")
    again = await orders.publish(b"order 42: 2 books", key="user:7", msg_id="order-42")
    assert again.duplicate and again.offset == r.offset  # a retry is stored once

    billing = consumer.topic("orders", partitions=16, max_messages=1_000_000, max_age=3600.0)
    async with billing.subscribe(group="billing", ack_wait=30.0, max_deliver=5) as sub:
        async for msg in sub:
            print("billing got", msg.data, "from", msg.key.decode())
            await msg.ack()  # or nak(delay=...), in_progress(), term()
            break
    async for msg in orders.read(start=0):  # fan-out replay without a group
        print("replay", msg.partition, msg.offset, msg.data)
    print("ok")


async def node(self_address: str, port: int) -> None:
    discovery = StaticDiscovery(peers=peers(port), self_address=self_address)
    async with PubSub(discovery=discovery, replication=3, quorum=2) as ps:
        await ps.node.wait_ready(60)
        if self_address == peers(port)[0]:
            await example(ps, ps)
        else:
            await asyncio.sleep(3600)  # serve the others until stopped


async def all_in_one(port: int) -> None:
    nodes = [
        PubSub(StaticDiscovery(peers(port), self_address=a), replication=3, quorum=2)
        for a in peers(port)
    ]
    for ps in nodes:
        await ps.start()
    try:
        for ps in nodes:
            await ps.node.wait_ready(60)
        await example(nodes[0], nodes[1])
    finally:
        for ps in nodes:
            await ps.stop()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--all"]:
        asyncio.run(all_in_one(int(sys.argv[2]) if len(sys.argv) > 2 else 7201))
    else:
        address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:7201"
        asyncio.run(node(address, int(address.rsplit(":", 1)[1])))
