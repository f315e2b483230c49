"""Cookbook: a work queue with peer-ring-pubsub consumer groups.

Producers publish jobs to a topic; workers on any node consume it in one group: each job
goes to one worker, is redelivered if that worker does not ack it within ``ack_wait``, and
goes to the dead-letter topic after ``max_deliver`` attempts. ``msg_id`` makes a retried
publish store the job once.

    python work_queue.py [port]      # three nodes in this process, real gRPC on 127.0.0.1-3
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter

from peer_ring.discovery.static import StaticDiscovery
from peer_ring.pubsub import PubSub

JOBS = 30


async def worker(ps: PubSub, name: str, done: Counter[str], handled: list[str]) -> None:
    jobs = ps.topic("jobs", partitions=8)
    async with jobs.subscribe(group="workers", ack_wait=30.0, max_deliver=3) as sub:
        while sum(done.values()) < JOBS:
            msg = await sub.next(timeout=0.5)
            if msg is None:
                continue
            handled.append(name)
            done[msg.data.decode()] += 1  # the work itself
            await msg.ack()


async def main(port: int) -> None:
    peers = [f"127.0.0.{i}:{port}" for i in (1, 2, 3)]
    nodes = [PubSub(StaticDiscovery(peers, self_address=p), replication=3, quorum=2) for p in peers]
    await asyncio.gather(*(ps.start() for ps in nodes))
    try:
        await asyncio.gather(*(ps.node.wait_ready(60) for ps in nodes))
        jobs = nodes[0].topic("jobs", partitions=8)
        for i in range(JOBS):
            await jobs.publish(f"job-{i}".encode(), key=f"customer:{i % 7}", msg_id=f"job-{i}")
        retry = await jobs.publish(b"job-3", key="customer:3", msg_id="job-3")
        assert retry.duplicate  # a retried publish is stored once
        done: Counter[str] = Counter()
        handled: list[str] = []
        await asyncio.wait_for(
            asyncio.gather(
                worker(nodes[1], "worker-b", done, handled),
                worker(nodes[2], "worker-c", done, handled),
            ),
            timeout=60,
        )
        assert sorted(done) == sorted(f"job-{i}" for i in range(JOBS))
        assert set(done.values()) == {1}, done  # each job handled exactly once
        print("work queue ok:", dict(Counter(handled)))
    finally:
        await asyncio.gather(*(ps.stop() for ps in nodes))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 7304))
