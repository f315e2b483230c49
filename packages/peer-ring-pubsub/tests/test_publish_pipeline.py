"""PUBLISH_MANY requests in flight per sequencer peer: two while light, one under load."""

from __future__ import annotations

import asyncio
from typing import Any

from peer_ring.pubsub import PubSub


def _hold_publish_many(ps: PubSub) -> tuple[list[int], list[int], asyncio.Event]:
    """Wrap ``ps``'s calls: each PUBLISH_MANY records (requests in flight, messages) as it
    leaves and waits for the returned event before it really goes."""
    in_flight: list[int] = []
    sizes: list[int] = []
    gate = asyncio.Event()
    real = ps.node.call
    count = [0]

    async def held(node: str, namespace: str, command: Any, key: bytes, payload: bytes, **k: Any):  # type: ignore[no-untyped-def]
        if getattr(command, "name", command) != "publish_many":
            return await real(node, namespace, command, key, payload, **k)
        count[0] += 1
        in_flight.append(count[0])
        sizes.append(payload.count(b"m-"))
        try:
            await gate.wait()
            return await real(node, namespace, command, key, payload, **k)
        finally:
            count[0] -= 1

    ps.node.call = held  # type: ignore[method-assign]
    return in_flight, sizes, gate


async def _turns(predicate: Any, limit: int = 200) -> None:
    for _ in range(limit):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("not reached")


async def test_a_light_load_sends_a_second_request_while_one_is_in_flight(cluster) -> None:
    nodes = await cluster.start(3)
    pub = nodes[0]
    topic = pub.topic("pipe", partitions=8)
    p = next(p for p in range(8) if topic.sequencer(p) != pub.node.address)
    warm = await topic.publish(b"m-warm", partition=p)  # a light request: 1 message
    in_flight, sizes, gate = _hold_publish_many(pub)
    first = asyncio.ensure_future(topic.publish(b"m-a", partition=p))
    await _turns(lambda: len(in_flight) == 1)
    second = asyncio.ensure_future(topic.publish(b"m-b", partition=p))
    await _turns(lambda: len(in_flight) == 2)
    assert in_flight == [1, 2] and sizes == [1, 1]  # b did not wait for a's round
    gate.set()
    a, b = await first, await second
    assert (warm.offset, a.offset, b.offset) == (0, 1, 2)  # order kept


async def test_under_load_messages_wait_for_the_request_in_flight(cluster) -> None:
    nodes = await cluster.start(3)
    pub = nodes[0]
    topic = pub.topic("pipe", partitions=8)
    p = next(p for p in range(8) if topic.sequencer(p) != pub.node.address)
    in_flight, sizes, gate = _hold_publish_many(pub)
    batch = [asyncio.ensure_future(topic.publish(b"m-%d" % i, partition=p)) for i in range(32)]
    await _turns(lambda: len(in_flight) == 1)
    gate.set()
    await asyncio.gather(*batch)  # a heavy request: the next ones are not pipelined
    gate.clear()
    more = [asyncio.ensure_future(topic.publish(b"m-x%d" % i, partition=p)) for i in range(8)]
    await _turns(lambda: len(in_flight) == 2)
    late = asyncio.ensure_future(topic.publish(b"m-late", partition=p))
    for _ in range(50):
        await asyncio.sleep(0)
    assert in_flight == [1, 1] and sizes == [32, 8]  # "late" waits for the one in flight
    gate.set()
    results = await asyncio.gather(*batch, *more, late)
    assert [r.offset for r in results] == list(range(41))
