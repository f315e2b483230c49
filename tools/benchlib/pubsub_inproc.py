"""``tools/bench pubsub --in-process``: requests between nodes per message, counted.

N peer-ring-pubsub nodes run in this one process over the real transport (loopback), a
closed loop of ``--concurrency`` publishers and one consumer-group member acking with
``ack_nowait`` move ``--messages`` messages, and every ``call`` / ``execute`` /
``execute_many`` a node makes is counted by command. One process means no scheduling
between processes: the counts (and the CPU time of the process per message) show what the
code costs, which the multi-process rates on a shared machine hide in their noise. The
counts are the pub-sub layer's view: an ``execute`` or ``execute_many`` reaches each of the
other replicas with one request (two at N=3). The headline figure is the transports' own
count of requests written between nodes (``requests_sent``), which needs no such reckoning.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from typing import Any


class _Counting:
    """Stands for a node in the pub-sub objects that send requests: each ``call`` /
    ``execute`` / ``execute_many`` is counted by command, everything else is the node's.

    A proxy rather than patched methods: the core rebinds its node's ``execute`` on start
    and every 1,000 operations (its tracing check), which silently dropped a patched one,
    so single-key ``execute`` calls (one-partition APPEND / GROUP flushes) were not counted.
    """

    def __init__(self, node: Any, counts: Counter[str]) -> None:
        self._node = node
        self._counts = counts

    def __getattr__(self, name: str) -> Any:
        return getattr(self._node, name)

    async def call(self, address: str, namespace: str, command: Any, *a: Any, **k: Any) -> Any:
        self._counts["call " + getattr(command, "name", str(command))] += 1
        return await self._node.call(address, namespace, command, *a, **k)

    async def execute(self, namespace: str, command: Any, *a: Any, **k: Any) -> Any:
        self._counts["execute " + getattr(command, "name", str(command))] += 1
        return await self._node.execute(namespace, command, *a, **k)

    async def execute_many(self, namespace: str, command: Any, items: Any, **k: Any) -> Any:
        self._counts["execute_many " + getattr(command, "name", str(command))] += 1
        return await self._node.execute_many(namespace, command, items, **k)


def _count(ps: Any, counts: Counter[str]) -> None:
    """Count the requests ``ps`` makes by command (see :class:`_Counting`)."""
    proxy = _Counting(ps.node, counts)
    for holder in (ps.leaders, getattr(ps.leaders, "groups", None), ps.client):
        if holder is not None and getattr(holder, "node", None) is ps.node:
            holder.node = proxy


def _requests_sent(cluster: list[Any]) -> int:
    """Requests the nodes' transports wrote to each other so far (every kind, the core's
    own included): the exact count, whatever layer sent them."""
    total = 0
    for ps in cluster:
        stats = getattr(ps.node.transport, "stats", None)
        total += int(stats()["requests_sent"]) if stats else 0
    return total


def make_cluster(nodes: int, transport: str) -> tuple[list[Any], int, int]:
    """``nodes`` PubSub instances on loopback (not started) and their (N, W): (1, 1) for one
    node, (3, 2) otherwise. ``PEER_RING_BENCH_PORT`` fixes the ports (one ring placement
    across runs); otherwise free ones."""
    from peer_ring.core import PeerRingConfig
    from peer_ring.core.testing import free_port
    from peer_ring.discovery.static import StaticDiscovery
    from peer_ring.pubsub import PubSub

    fixed = os.environ.get("PEER_RING_BENCH_PORT")  # one ring placement across runs
    peers = [f"127.0.0.1:{int(fixed) + i if fixed else free_port()}" for i in range(nodes)]
    n, w = (1, 1) if nodes == 1 else (3, 2)
    cluster = [
        PubSub(
            StaticDiscovery(peers, self_address=address),
            replication=n,
            quorum=w,
            config=PeerRingConfig(
                replication=n, quorum=w, anti_entropy_interval=None, transport=transport
            ),
        )
        for address in peers
    ]
    return cluster, n, w


async def start_cluster(cluster: list[Any], name: str, partitions: int) -> Any:
    """Start every node, wait until each is ready, declare topic ``name`` on each; returns
    node 0's topic."""
    for ps in cluster:
        await ps.start()
    for ps in cluster:
        await ps.node.wait_ready(60)
    topic = cluster[0].topic(name, partitions=partitions)
    for ps in cluster[1:]:
        ps.topic(name, partitions=partitions)
    return topic


async def run(
    nodes: int, partitions: int, messages: int, concurrency: int, size: int, transport: str
) -> dict[str, Any]:
    """Move ``messages`` through an in-process cluster; return CPU and request counts."""
    cluster, n, w = make_cluster(nodes, transport)
    counts: Counter[str] = Counter()
    for ps in cluster:
        _count(ps, counts)
    try:
        topic = await start_cluster(cluster, "inproc", partitions)
        received = 0
        done = asyncio.Event()
        sub = topic.subscribe(group="g", max_in_flight=2048, start="latest")

        async def consume() -> None:
            nonlocal received
            async for msg in sub:
                msg.ack_nowait()
                received += 1
                if received >= messages:
                    done.set()

        async with sub:
            consumer = asyncio.ensure_future(consume())
            await asyncio.sleep(0.5)  # the group exists at the log's end
            counts.clear()
            wire = _requests_sent(cluster)
            sent = 0
            cpu, wall = time.process_time(), time.monotonic()

            async def publisher() -> None:
                nonlocal sent
                while sent < messages:
                    sent += 1
                    await topic.publish(b"x" * size)

            await asyncio.gather(*(publisher() for _ in range(concurrency)))
            await asyncio.wait_for(done.wait(), 120)
            cpu, wall = time.process_time() - cpu, time.monotonic() - wall
            wire = _requests_sent(cluster) - wire
            consumer.cancel()
        per_k = {k: round(1000 * v / messages, 1) for k, v in sorted(counts.items())}
        return {
            "system": f"peer-ring-pubsub in-process N={n} W={w} {transport}",
            "partitions": partitions,
            "messages": messages,
            "cpu_us_per_msg": round(1e6 * cpu / messages, 1),
            "msgs_per_s": round(messages / wall, 1),
            "calls_per_1000_msgs": per_k,
            "requests_per_1000_msgs": round(
                sum(v * (1 if k.startswith("call ") else n - 1) for k, v in per_k.items()), 1
            ),
            # What the transports wrote: every request between nodes, counted once.
            "wire_requests_per_1000_msgs": round(1000 * wire / messages, 1),
        }
    finally:
        for ps in cluster:
            await ps.stop()


def table(results: list[dict[str, Any]]) -> str:
    """The in-process results as text lines."""
    lines = []
    for r in results:
        calls = ", ".join(f"{k} {v}" for k, v in r["calls_per_1000_msgs"].items())
        lines.append(
            f"{r['system']}, {r['partitions']} partitions: {r['cpu_us_per_msg']} us CPU/msg, "
            f"{r['msgs_per_s']} msgs/s, {r.get('wire_requests_per_1000_msgs', '?')} requests "
            f"between nodes per 1000 msgs (transport count; pub-sub's view "
            f"~{r['requests_per_1000_msgs']}: {calls})"
        )
    return "\n".join(lines)
