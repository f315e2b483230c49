"""Consumer groups on an in-memory cluster: competing consumers, member crashes,
redelivery, dead letters, backpressure, broadcast."""

from __future__ import annotations

import asyncio

import pytest

from peer_ring.pubsub import Message, StaleAckError, Subscription
from peer_ring.pubsub._wire import ring_key

ACK_WAIT = 5.0


class Ledger:
    """Who holds which message, to check "never two live holders within one ack window"."""

    def __init__(self, clock) -> None:
        self.clock = clock
        self.holders: dict[tuple[int, int], tuple[str, float]] = {}
        self.acked: set[tuple[int, int]] = set()
        self.dead: set[str] = set()
        self.deliveries = 0

    def receive(self, who: str, msg: Message) -> None:
        key = (msg.partition, msg.offset)
        assert key not in self.acked, f"acked message {key} delivered again"
        now = self.clock.monotonic()
        held = self.holders.get(key)
        if held is not None and held[0] != who and held[0] not in self.dead:
            assert now - held[1] >= ACK_WAIT, f"{key} held by {held[0]} and {who} at once"
        self.holders[key] = (who, now)
        self.deliveries += 1


async def _consume(name: str, sub: Subscription, ledger: Ledger, work: float) -> None:
    clock = sub.topic.pubsub.node.clock
    async for msg in sub:
        ledger.receive(name, msg)
        await clock.sleep(work)
        try:
            await msg.ack()
        except StaleAckError:
            continue
        ledger.acked.add((msg.partition, msg.offset))


async def test_member_crash_redelivers_only_its_messages_after_ack_wait(cluster) -> None:
    nodes = await cluster.start(4)
    addrs = list(cluster.members)
    topic = nodes[0].topic("jobs", partitions=4)
    for i in range(120):
        await topic.publish(f"job{i}".encode(), key=str(i))
    ledger = Ledger(cluster.clock)
    subs = {
        name: cluster.nodes[addr]
        .topic("jobs", partitions=4)
        .subscribe(group="workers", ack_wait=ACK_WAIT, max_in_flight=8)
        for name, addr in (("w1", addrs[1]), ("w2", addrs[2]))
    }
    tasks = {}
    for name, sub in subs.items():
        sub.start()
        tasks[name] = asyncio.ensure_future(_consume(name, sub, ledger, 0.05))
    await cluster.until(lambda: len(ledger.acked) >= 30)
    # w2's node crashes: its unacked messages come back to w1 after ack_wait, not before.
    crashed = addrs[2]
    ledger.dead.add("w2")
    tasks["w2"].cancel()
    for task in subs["w2"]._tasks:  # the process dies: no release, no more fetches
        task.cancel()
    held_by_w2 = subs["w2"].health().in_flight
    await cluster.kill(crashed)
    cluster.set_members([a for a in addrs if a != crashed])
    # A new member joins the group on another node.
    w3 = (
        cluster.nodes[addrs[3]]
        .topic("jobs", partitions=4)
        .subscribe(group="workers", ack_wait=ACK_WAIT, max_in_flight=8)
    )
    w3.start()
    tasks["w3"] = asyncio.ensure_future(_consume("w3", w3, ledger, 0.05))
    await cluster.until(lambda: len(ledger.acked) >= 120, within=600)
    assert ledger.deliveries - 120 <= held_by_w2 + 8, "more duplicates than w2 held"
    for name in ("w1", "w3"):
        tasks[name].cancel()
    await subs["w1"].close()
    await w3.close()


async def test_redelivery_stale_ack_and_dead_letter(cluster) -> None:
    a, b, _ = await cluster.start(3)
    topic = a.topic("q", partitions=1)
    await topic.publish(b"poison")
    async with b.topic("q", partitions=1).subscribe(
        group="g", ack_wait=ACK_WAIT, max_deliver=2, max_in_flight=1
    ) as sub:
        first = await sub.next(timeout=30)
        assert first is not None and first.deliveries == 1
        second = await sub.next(timeout=30)  # ack_wait expired: redelivered
        assert second is not None and second.deliveries == 2 and second.offset == first.offset
        with pytest.raises(StaleAckError):
            await first.ack()
        await second.nak()  # back at once; max_deliver reached: to the dead-letter topic
        assert await sub.next(timeout=3 * ACK_WAIT) is None
    dead = [m async for m in a.topic("q", partitions=1).dead_letter.read(start=0)]
    assert [m.data for m in dead] == [b"poison"]


async def test_slow_consumer_is_bounded_and_does_not_stall_other_groups(cluster) -> None:
    a, b, c = await cluster.start(3)
    topic = a.topic("events", partitions=2)
    for i in range(60):
        await topic.publish(str(i).encode())
    slow = b.topic("events", partitions=2).subscribe(group="slow", max_in_flight=5, ack_wait=100)
    fast = c.topic("events", partitions=2).subscribe(group="fast", max_in_flight=10)
    async with slow, fast:
        held = [await slow.next(timeout=30) for _ in range(5)]
        assert all(m is not None for m in held)
        got = 0
        while got < 60:
            msg = await fast.next(timeout=30)
            assert msg is not None
            await msg.ack()
            got += 1
        assert await slow.next(timeout=1.0) is None  # bounded: nothing beyond 5 in flight
        assert slow.health().in_flight == 5 and not slow.health().stalled
        await cluster.clock.sleep(101.0)  # nothing settled for longer than ack_wait
        health = slow.health()
        assert health.in_flight <= 5 and health.stalled
        assert not fast.health().stalled
        assert b.metrics()["stalled_subscriptions"] == 1


async def test_broadcast_every_subscriber_gets_every_message(cluster) -> None:
    a, b, c = await cluster.start(3)
    subs = [ps.topic("news", partitions=2).subscribe(start="earliest") for ps in (b, c)]
    for sub in subs:
        sub.start()
    for i in range(10):
        await a.topic("news", partitions=2).publish(str(i).encode())
    for sub in subs:
        got = set()
        while len(got) < 10:
            msg = await sub.next(timeout=30)
            assert msg is not None and msg.deliveries == 0
            got.add(msg.data)
        await sub.close()


async def test_sequencer_killed_during_consumption_never_redelivers_an_acked_message(
    cluster,
) -> None:
    nodes = await cluster.start(3)
    addresses = list(cluster.members)
    victim = nodes[0].node.preference_list(ring_key("work", 0), 3)[0]
    survivor = cluster.nodes[next(a for a in addresses if a != victim)]
    topic = survivor.topic("work", partitions=2)
    for i in range(100):
        await topic.publish(f"w{i}".encode(), msg_id=f"w{i}", partition=i % 2)
    ledger = Ledger(cluster.clock)
    sub = topic.subscribe(group="g", ack_wait=ACK_WAIT, max_in_flight=4)
    sub.start()
    task = asyncio.ensure_future(_consume("s", sub, ledger, 0.01))
    await cluster.until(lambda: len(ledger.acked) >= 30)
    await cluster.kill(victim)  # the node holding partition 0's group state as sequencer
    cluster.set_members([a for a in addresses if a != victim])
    await cluster.until(lambda: len(ledger.acked) >= 100, within=600)
    task.cancel()
    await sub.close()
    # Ledger.receive asserted on every delivery that no acked message came back.
    assert ledger.deliveries - 100 <= 4 + 4  # at most what was in flight at the kill, twice


async def test_an_ack_is_on_w_replicas_when_it_returns(cluster) -> None:
    a, b, _ = await cluster.start(3)
    topic = a.topic("durable", partitions=1)
    for i in range(5):
        await topic.publish(str(i).encode())
    key = ring_key("durable", 0)
    async with b.topic("durable", partitions=1).subscribe(group="g") as sub:
        for _ in range(5):
            msg = await sub.next(timeout=30)
            assert msg is not None
            await msg.ack()
            holders = [
                ps
                for ps in cluster.nodes.values()
                if (state := ps.store.get(key)) is not None
                and "g" in state.groups
                and state.groups["g"].is_done(msg.offset)
            ]
            assert len(holders) >= 2, f"ack of {msg.offset} on {len(holders)} replica(s)"
