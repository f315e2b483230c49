"""Review of delivery records in the fetch reply (944bbb9), over real TCP.

Since 944bbb9 a group consumer on a node that holds a replica of the partition gets the
delivery records of what it is handed in the sequencer's reply, and merges them before
handing anything out: the sequencer's copy and the consumer node's are the W = 2 copies.
What a group relies on, checked with three in-process nodes on loopback (R3/W2: every
consumer node holds a replica, so every fetch of a consumer not on the sequencer takes the
new path), one partition, and two consumers of one group on the two non-sequencer nodes:

- a consumer never holds more than ``max_in_flight`` unacked messages: holding that many,
  ``next`` hands it nothing more, and the sequencer never records more than that many
  messages as held by it;
- no message is handed to both consumers, or twice to one, while no ``ack_wait`` expires
  (never two live holders), and nothing acked comes back;
- every published message is delivered;
- after the sequencer is stopped, the messages a consumer holds unacked are not handed to
  the other consumer (the records the reply carried are on the consumer's node, which the
  next sequencer reads), and what was acked before does not come back.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from peer_ring.core import PeerRingConfig
from peer_ring.core.testing import FixedDiscovery, free_port
from peer_ring.core.transport import TransportLimits
from peer_ring.pubsub import Message, PubSub, Subscription
from peer_ring.pubsub._wire import ring_key

#: Upper bound of any single wait (real seconds). Only reached on a bug.
LIMIT = 60.0
TOPIC = "review-rr"
MAX_IN_FLIGHT = 3
#: Longer than any of these tests: an expiry would be a redelivery the checks count.
ACK_WAIT = 60.0
#: How long a consumer at its bound waits to see that nothing more is handed out.
QUIET = 0.3


def config() -> PeerRingConfig:
    return PeerRingConfig(
        partitions=64,
        replication=3,
        quorum=2,
        request_timeout=2.0,
        transport="tcp",
        probe_interval=0.2,
        probe_timeout=0.3,
        suspicion_timeout=0.5,
        down_after=None,
        anti_entropy_interval=None,
        transport_limits=TransportLimits(connect_timeout=2.0, backoff_max=0.2),
    )


async def bounded(aw: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(aw, LIMIT)


async def eventually(predicate: Callable[[], bool], within: float = LIMIT) -> None:
    """Poll a condition of real nodes (there is no event to wait for), bounded in time."""
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


class Tcp3:
    """Three PubSub nodes over TCP; discovery per node, so a stopped one can be dropped."""

    def __init__(self) -> None:
        self.addresses = [f"127.0.0.1:{free_port()}" for _ in range(3)]
        self.discoveries = {a: FixedDiscovery(a, self.addresses) for a in self.addresses}
        self.nodes = {
            a: PubSub(d, replication=3, quorum=2, config=config(), timeout=15.0)
            for a, d in self.discoveries.items()
        }
        self.stopped: list[PubSub] = []

    async def start(self) -> None:
        for ps in self.nodes.values():
            await ps.start()
        await eventually(lambda: all(ps.node.ready for ps in self.nodes.values()))

    def roles(self) -> tuple[PubSub, PubSub, PubSub]:
        """(sequencer of the topic's one partition, the other two nodes)."""
        any_node = next(iter(self.nodes.values()))
        head = any_node.client.head(ring_key(TOPIC, 0))
        assert head is not None
        sequencer = self.nodes[head]
        first, second = (ps for a, ps in self.nodes.items() if a != head)
        return sequencer, first, second

    async def stop_node(self, ps: PubSub) -> None:
        """Stop ``ps`` (its transport closes) and drop it from the others' discovery."""
        address = ps.node.address
        self.nodes.pop(address)
        self.stopped.append(ps)
        await ps.node.stop()
        rest = list(self.nodes)
        for a in rest:
            self.discoveries[a].set_members(rest)

    async def stop(self) -> None:
        for ps in self.nodes.values():
            await ps.stop()


@pytest.fixture
async def tcp3() -> AsyncIterator[Tcp3]:
    cluster = Tcp3()
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.stop()


def held_by(cluster: Tcp3, consumer: str, partitions: int) -> int:
    """Messages the sequencers (each partition's head) record as held by ``consumer``."""
    count = 0
    for partition in range(partitions):
        key = ring_key(TOPIC, partition)
        head = next(iter(cluster.nodes.values())).client.head(key)
        state = cluster.nodes[head].store.get(key) if head in cluster.nodes else None
        group = state.groups.get("g") if state is not None else None
        if group is not None:
            count += sum(1 for p in group.pending.values() if p.consumer == consumer)
    return count


class Consumer:
    """One group member that holds up to ``MAX_IN_FLIGHT`` messages before acking the
    oldest, checking the bound each time it is full."""

    def __init__(
        self,
        sub: Subscription,
        delivered: dict[bytes, str],
        name: str,
        *,
        release_when_idle: bool = False,
    ) -> None:
        self.sub = sub
        self.delivered = delivered  # shared: message -> who got it
        self.name = name
        self.held: deque[Message] = deque()
        self.acked: set[bytes] = set()
        #: Ack everything held when nothing came within QUIET (an application that is
        #: done with its work): holding messages meanwhile would keep its slots, and with
        #: several partitions its one free slot may wait in a long poll of an idle one.
        self.release_when_idle = release_when_idle

    async def take(self, held: Callable[[str], int] | None) -> bool:
        """Take one message (False when none came within QUIET), or, when full, check
        that nothing more is handed out and ack the oldest two."""
        if len(self.held) >= MAX_IN_FLIGHT:
            extra = await self.sub.next(timeout=QUIET)
            assert extra is None, f"{self.name} handed a message beyond max_in_flight"
            assert self.sub.health().in_flight <= MAX_IN_FLIGHT
            for _ in range(2):
                oldest = self.held.popleft()
                await bounded(oldest.ack())
                self.acked.add(oldest.data)
            return True
        msg = await self.sub.next(timeout=QUIET)
        if msg is None:
            if self.release_when_idle:
                await self.ack_all()
            return False
        other = self.delivered.setdefault(msg.data, self.name)
        assert other == self.name and msg.data not in self.acked, (
            f"{msg.data!r} handed to {self.name}, held or acked by {other}"
        )
        assert all(m.data != msg.data for m in self.held), f"{msg.data!r} handed twice"
        self.held.append(msg)
        if held is not None:
            assert held(self.sub.consumer) <= MAX_IN_FLIGHT
        return True

    async def ack_all(self) -> None:
        while self.held:
            msg = self.held.popleft()
            await bounded(msg.ack())
            self.acked.add(msg.data)


async def consume_until(
    consumers: list[Consumer], held: Callable[[str], int] | None, done: Callable[[], bool]
) -> None:
    async def run(c: Consumer) -> None:
        for _ in range(10_000):  # bounded; `done` ends it long before
            if done():
                return
            await c.take(held)

    await bounded(asyncio.gather(*(run(c) for c in consumers)))


def subscribe(ps: PubSub, partitions: int = 1) -> Subscription:
    """A member of group "g" on ``ps`` (MAX_IN_FLIGHT, ACK_WAIT)."""
    topic = ps.topic(TOPIC, partitions=partitions)
    return topic.subscribe(group="g", max_in_flight=MAX_IN_FLIGHT, ack_wait=ACK_WAIT)


async def publish(ps: PubSub, tag: str, count: int, partitions: int = 1) -> list[bytes]:
    topic = ps.topic(TOPIC, partitions=partitions)
    out = []
    for i in range(count):
        data = f"{tag}-{i:03d}".encode()
        await bounded(topic.publish(data, msg_id=data.decode()))
        out.append(data)
    return out


@pytest.mark.parametrize("partitions", [1, 4])
async def test_two_tcp_consumers_of_a_group_never_exceed_max_in_flight_or_share_a_message(
    tcp3: Tcp3, partitions: int
) -> None:
    """One partition, or four (one fetch request per sequencer with a section per
    partition, the records in each section)."""
    sequencer, first, second = tcp3.roles()
    for ps in tcp3.nodes.values():
        ps.topic(TOPIC, partitions=partitions)
    delivered: dict[bytes, str] = {}
    async with subscribe(first, partitions) as sub1, subscribe(second, partitions) as sub2:
        consumers = [
            Consumer(sub1, delivered, "first", release_when_idle=True),
            Consumer(sub2, delivered, "second", release_when_idle=True),
        ]
        publisher = asyncio.ensure_future(publish(sequencer, "m", 60, partitions))
        await consume_until(
            consumers,
            lambda consumer: held_by(tcp3, consumer, partitions),
            lambda: publisher.done() and len(delivered) >= 60,
        )
        published = await bounded(publisher)
        for c in consumers:
            await c.ack_all()
        # Everything acked: nothing is handed out again.
        again = await bounded(asyncio.gather(sub1.next(timeout=1.0), sub2.next(timeout=1.0)))
        assert again == [None, None]
        healths = [sub1.health(), sub2.health()]
    assert sorted(delivered) == sorted(published)
    assert all(h.redelivered == 0 and h.expired == 0 for h in healths), healths
    assert sum(h.acked for h in healths) == 60
    assert all(h.delivered > 0 for h in healths), healths  # both took part
    # The path under review was taken.
    assert sum(ps.service.records_in_reply for ps in tcp3.nodes.values()) > 0


async def test_held_messages_stay_with_their_consumer_across_a_sequencer_stop(
    tcp3: Tcp3,
) -> None:
    """Each consumer holds MAX_IN_FLIGHT messages unacked when the sequencer stops; the
    group goes on with the next sequencer: the other consumer never gets one of them (their
    ack_wait has not expired), nothing acked before comes back, and after the holders ack
    them every message published before and after the stop was delivered once."""
    sequencer, first, second = tcp3.roles()
    for ps in tcp3.nodes.values():
        ps.topic(TOPIC, partitions=1)
    delivered: dict[bytes, str] = {}
    async with subscribe(first) as sub1, subscribe(second) as sub2:
        consumers = [Consumer(sub1, delivered, "first"), Consumer(sub2, delivered, "second")]
        before = await publish(sequencer, "before", 20)
        # Consume until both are full (what is left of `before` stays unclaimed or held).
        await consume_until(
            consumers,
            lambda consumer: held_by(tcp3, consumer, 1),
            lambda: all(len(c.held) == MAX_IN_FLIGHT for c in consumers),
        )
        held = {c.name: {m.data for m in c.held} for c in consumers}
        await tcp3.stop_node(sequencer)
        await eventually(lambda: all(len(ps.node.ring) == 2 for ps in tcp3.nodes.values()))
        after = await publish(first, "after", 20)
        total = len(before) + len(after)
        # Each acks one of the messages it held (nothing acked may come back), keeping the
        # others held through the rest: one slot each, every message taken is acked.
        pinned = {c.name: list(c.held) for c in consumers}
        for c in consumers:
            c.held.clear()
            msg = pinned[c.name].pop(0)
            await bounded(msg.ack())
            c.acked.add(msg.data)

        async def rest(c: Consumer) -> None:
            for _ in range(10_000):  # bounded; the count ends it long before
                if len(delivered) >= total:
                    return
                msg = await c.sub.next(timeout=QUIET)
                if msg is None:
                    continue
                other = delivered.setdefault(msg.data, c.name)
                assert other == c.name and msg.data not in c.acked, (
                    f"{msg.data!r} handed to {c.name}, held or acked by {other}"
                )
                assert msg.data not in held[c.name], f"{msg.data!r} handed twice"
                await bounded(msg.ack())
                c.acked.add(msg.data)

        await bounded(asyncio.gather(*(rest(c) for c in consumers)))
        for c in consumers:
            for msg in pinned[c.name]:
                assert delivered[msg.data] == c.name
                await bounded(msg.ack())
                c.acked.add(msg.data)
        again = await bounded(asyncio.gather(sub1.next(timeout=1.0), sub2.next(timeout=1.0)))
        assert again == [None, None]
    assert sorted(delivered) == sorted(before + after)
    assert all(len(mine) == MAX_IN_FLIGHT for mine in held.values())
