"""Publish / subscribe on an in-memory 3-node cluster (N=3, W=2) with a fake clock."""

from __future__ import annotations

from collections import defaultdict

import pytest

from peer_ring.pubsub import PubSub


async def test_publish_then_group_consume_in_key_order(cluster) -> None:
    a, b, c = await cluster.start(3)
    orders = a.topic("orders", partitions=4)
    published = []
    for i in range(40):
        r = await orders.publish(f"m{i}".encode(), key=f"user:{i % 5}", msg_id=f"id-{i}")
        assert not r.duplicate
        published.append((r.partition, r.offset, f"m{i}"))
    again = await orders.publish(b"m3", key="user:3", msg_id="id-3")
    assert again.duplicate and (again.partition, again.offset) == published[3][:2]

    got: dict[str, list[int]] = defaultdict(list)
    async with b.topic("orders", partitions=4).subscribe(group="billing") as sub:
        while sum(len(v) for v in got.values()) < 40:
            msg = await sub.next(timeout=30)
            assert msg is not None
            got[msg.key.decode()].append(int(msg.data[1:]))
            await msg.ack()
    for key, seen in got.items():
        assert seen == sorted(seen), f"key {key} out of order: {seen}"
    # Replay from offset 0 on a third node sees every message once, in offset order.
    replay = [
        (m.partition, m.offset, m.data.decode())
        async for m in c.topic("orders", partitions=4).read(start=0)
    ]
    assert sorted(replay) == sorted(published)


async def test_publish_nowait_is_fire_and_forget(cluster) -> None:
    a, b, _ = await cluster.start(3)
    topic = a.topic("fire", partitions=2)
    for i in range(10):
        assert topic.publish_nowait(str(i).encode(), key=str(i)) is None  # returns at once
    reader = b.topic("fire", partitions=2)
    await cluster.until(lambda: sum(ps.published for ps in (a,)) == 0)  # nothing awaited

    async def count() -> int:
        return len([m async for m in reader.read(start=0)])

    for _ in range(100):  # bounded: the sends land within a few loop turns
        if await count() == 10:
            break
        await cluster.clock.sleep(0.1)
    assert await count() == 10


async def test_pubsub_on_a_shared_node() -> None:
    from peer_ring.core import InvalidArgumentError, PeerRing
    from peer_ring.core.testing import FakeClock, FixedDiscovery, MemoryNetwork

    clock = FakeClock()
    network = MemoryNetwork(clock)
    address = "127.0.0.1:7101"
    node = PeerRing(
        FixedDiscovery(address, [address]), transport=network.transport(address), clock=clock
    )
    with pytest.raises(InvalidArgumentError):
        PubSub()  # neither discovery nor node
    with pytest.raises(InvalidArgumentError):
        PubSub(node=node, replication=1, quorum=2)
    ps = PubSub(node=node, replication=1, quorum=1)
    await node.start()  # the application that owns the node starts it
    try:
        async with ps:  # does not start or stop a node it was given
            r = await ps.topic("t", partitions=1).publish(b"x")
            assert r.offset == 0
        assert node.running
    finally:
        await node.stop()
