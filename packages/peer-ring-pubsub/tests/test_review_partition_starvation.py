"""Regression test of a review finding (seen at 944bbb9 and at its parent, fixed since): a
group consumer whose ``max_in_flight`` is smaller than the topic's partition count left a
partition's message undelivered while it had room for it.

Each partition has its own fetch loop, and a loop reserves a slot of ``max_in_flight`` for
each long poll (``POLL_WAIT``). When the one free slot is taken by the loop of a partition
with nothing to deliver, that loop's empty long poll ends and the same loop reserves the
slot again at once (no other waiting loop runs in between), so the loop of a partition
that has a message never gets the slot: the message waits until the application settles
something. Found by ``test_review_records_in_reply_tcp.py`` with four partitions (a
consumer holding messages unacked, the last message of one partition undelivered for
50 s+ with both consumers below their bound); reproduced here on the memory cluster.
Fixed: a loop back from a fetch lets the loops parked for room go first, so the free
slots go round the partitions.
"""

from __future__ import annotations

from peer_ring.pubsub import PubSub

TOPIC = "starve"
PARTITIONS = 4


async def test_a_message_is_delivered_while_the_consumer_has_room(cluster: object) -> None:
    """max_in_flight 2, four partitions: the consumer holds one message of partition 0
    (unacked) and so has room for one more; a message published to partition 3 must
    reach it (within 10 fake seconds: ten long polls)."""
    nodes: list[PubSub] = await cluster.start(3)  # type: ignore[attr-defined]
    publisher = nodes[0].topic(TOPIC, partitions=PARTITIONS)
    consumer_node = nodes[1].topic(TOPIC, partitions=PARTITIONS)
    async with consumer_node.subscribe(group="g", max_in_flight=2, ack_wait=600.0) as sub:
        await publisher.publish(b"first", partition=0)
        held = await sub.next(timeout=30.0)
        assert held is not None and held.partition == 0  # kept unacked: one slot left
        await publisher.publish(b"second", partition=3)
        second = await sub.next(timeout=10.0)
        assert second is not None and second.data == b"second"
        assert sub.health().in_flight <= 2
