"""Sequencer failures on an in-memory cluster: no acknowledged publish is ever lost.

Scenario of the issue: publish continuously, kill the sequencer of a partition, restart it
empty, kill another node; then every acknowledged publish is at its offset and no offset
holds two messages.
"""

from __future__ import annotations

import asyncio

from peer_ring.core import Ring
from peer_ring.pubsub import PartitionUnavailableError, PublishError, PubSub, sequencers
from peer_ring.pubsub._wire import ring_key

PARTITIONS = 4


async def _publisher(
    ps: PubSub, name: str, acked: dict[tuple[int, int], bytes], stop: asyncio.Event, tag: str
) -> int:
    topic = ps.topic(name, partitions=PARTITIONS)
    failures = 0
    i = 0
    while not stop.is_set() and i < 2000:  # bounded
        data = f"{tag}-{i}".encode()
        try:
            r = await topic.publish(data, key=f"k{i % 7}", msg_id=f"{tag}-{i}")
        except (PublishError, PartitionUnavailableError):
            failures += 1
            continue  # not acknowledged: the retry uses the same msg_id
        previous = acked.setdefault((r.partition, r.offset), data)
        assert previous == data, f"offset {(r.partition, r.offset)} acknowledged twice"
        i += 1
        await asyncio.sleep(0)
    return failures


async def _check(ps: PubSub, name: str, acked: dict[tuple[int, int], bytes]) -> None:
    seen: dict[tuple[int, int], bytes] = {}
    async for m in ps.topic(name, partitions=PARTITIONS).read(start=0):
        assert (m.partition, m.offset) not in seen, "an offset was read twice"
        seen[(m.partition, m.offset)] = m.data
    lost = {k: v for k, v in acked.items() if seen.get(k) != v}
    assert not lost, f"{len(lost)} acknowledged publishes lost or changed: {sorted(lost)[:5]}"
    # No message is stored twice under different offsets (publishes carry msg_ids).
    assert len(set(seen.values())) == len(seen)


async def test_kill_sequencer_restart_empty_kill_another(cluster) -> None:
    nodes = await cluster.start(3)
    addresses = list(cluster.members)
    victim = nodes[0].node.preference_list(ring_key("t", 0), 3)[0]
    publisher_address = next(a for a in addresses if a != victim)
    publisher = cluster.nodes[publisher_address]
    acked: dict[tuple[int, int], bytes] = {}
    stop = asyncio.Event()
    task = asyncio.ensure_future(_publisher(publisher, "t", acked, stop, "a"))
    await cluster.until(lambda: len(acked) >= 50)

    await cluster.kill(victim)  # the sequencer of partition 0 dies (kill -9: state gone)
    cluster.set_members([a for a in addresses if a != victim])
    count = len(acked)
    await cluster.until(lambda: len(acked) >= count + 50)

    await cluster.restart_empty(victim)  # back, empty: it re-syncs before it is ready
    cluster.set_members(addresses)
    count = len(acked)
    await cluster.until(lambda: len(acked) >= count + 50)

    other = next(a for a in addresses if a not in (victim, publisher_address))
    await cluster.kill(other)
    cluster.set_members([a for a in addresses if a != other])
    count = len(acked)
    await cluster.until(lambda: len(acked) >= count + 50)
    stop.set()
    await task
    assert sum(ps.leaders.takeovers for ps in cluster.nodes.values()) >= PARTITIONS
    await _check(publisher, "t", acked)
    await _check(cluster.nodes[victim], "t", acked)


async def test_group_resumes_at_its_stored_cursor_after_the_sequencer_restarts_empty(
    cluster,
) -> None:
    nodes = await cluster.start(3)
    addresses = list(cluster.members)
    key = ring_key("jobs", 0)
    victim = nodes[0].node.preference_list(key, 3)[0]
    other = cluster.nodes[next(a for a in addresses if a != victim)]
    topic = other.topic("jobs", partitions=1)
    for i in range(20):
        await topic.publish(str(i).encode())
    async with topic.subscribe(group="g") as sub:
        for i in range(10):
            msg = await sub.next(timeout=30)
            assert msg is not None and msg.offset == i
            await msg.ack()
    await cluster.kill(victim)
    cluster.set_members([a for a in addresses if a != victim])
    await cluster.until(lambda: victim not in other.node.ring)
    restarted = await cluster.restart_empty(victim)
    cluster.set_members(addresses)
    await cluster.until(lambda: restarted.node.ready and victim in other.node.ring)
    ready_at = cluster.clock.monotonic()
    async with restarted.topic("jobs", partitions=1).subscribe(group="g") as sub:
        msg = await sub.next(timeout=30)
        assert msg is not None
        assert msg.offset == 10, "the group must resume at its stored cursor"
        assert cluster.clock.monotonic() - ready_at <= 2.0


async def test_a_joining_node_takes_over_partitions_with_their_logs(cluster) -> None:
    nodes = await cluster.start(3)
    first = nodes[0]
    topic = first.topic("grow", partitions=8)
    before = {}
    for i in range(80):
        r = await topic.publish(f"m{i}".encode(), msg_id=f"m{i}")
        before[(r.partition, r.offset)] = f"m{i}".encode()
    # A new address that will head at least one of the topic's partitions.
    newcomer = next(
        cand
        for cand in (f"127.0.0.{i}:7101" for i in range(4, 60))
        if cand in sequencers(Ring([*cluster.members, cand], 64), "grow", 8, 3)
    )
    cluster.set_members([*cluster.members, newcomer])
    joined = await cluster.restart_empty(newcomer)  # a fresh node: it pulls, then is ready
    await cluster.until(lambda: all(newcomer in ps.node.ring for ps in cluster.nodes.values()))
    grow = joined.topic("grow", partitions=8)
    heads = {p for p in range(8) if grow.sequencer(p) == newcomer}
    assert heads
    for i in range(80, 120):
        r = await topic.publish(f"m{i}".encode(), msg_id=f"m{i}")
        before[(r.partition, r.offset)] = f"m{i}".encode()
    seen = {(m.partition, m.offset): m.data async for m in grow.read()}
    assert seen == before
    assert joined.leaders.takeovers >= len(heads)


async def test_a_non_durable_topic_lives_on_its_sequencer_only(cluster) -> None:
    nodes = await cluster.start(3)
    addresses = list(cluster.members)
    key = ring_key("ticks", 0)
    victim = nodes[0].node.preference_list(key, 3)[0]
    other = cluster.nodes[next(a for a in addresses if a != victim)]
    topic = other.topic("ticks", partitions=1, durable=False)
    first = [await topic.publish(str(i).encode()) for i in range(5)]
    assert [r.offset for r in first] == [0, 1, 2, 3, 4]
    holders = [ps for ps in cluster.nodes.values() if ps.store.get(key) is not None]
    assert [ps.node.address for ps in holders if ps.store.get(key).log.entries] == [victim]
    await cluster.kill(victim)
    cluster.set_members([a for a in addresses if a != victim])
    await cluster.until(lambda: victim not in other.node.ring)
    after = await topic.publish(b"after")
    assert after.epoch > first[0].epoch  # a new log under a new epoch: no offset is reused
    assert [m.data async for m in topic.read(start=0)] == [b"after"]  # the old log is gone
