"""Bad input gets a clear typed error and the node keeps serving."""

from __future__ import annotations

import pytest

from peer_ring.core import QuorumNotReachedError
from peer_ring.pubsub import (
    InvalidOptionError,
    Message,
    NotHeldError,
    OffsetOutOfRangeError,
    PayloadTooLargeError,
)
from peer_ring.pubsub._wire import APPEND, FETCH, NAMESPACE, PUBLISH, open_reply, ring_key


async def test_topic_and_subscription_options_are_checked(cluster) -> None:
    a, *_ = await cluster.start(3)
    with pytest.raises(InvalidOptionError, match="unknown topic option"):
        a.topic("t", partitons=3)
    with pytest.raises(InvalidOptionError, match="partitions"):
        a.topic("t", partitions=0)
    with pytest.raises(InvalidOptionError, match="max_age"):
        a.topic("t", max_age=-1)
    with pytest.raises(InvalidOptionError, match="invalid topic name"):
        a.topic("bad/name")
    a.topic("t", partitions=2)
    with pytest.raises(InvalidOptionError, match="other options"):
        a.topic("t", partitions=3)
    topic = a.topic("t")
    with pytest.raises(InvalidOptionError):
        topic.subscribe(group="", ack_wait=1)
    with pytest.raises(InvalidOptionError):
        topic.subscribe(group="g", max_in_flight=0)
    with pytest.raises(InvalidOptionError):
        topic.subscribe(group="g", start=5)  # offsets are for broadcast readers
    with pytest.raises(InvalidOptionError):
        await topic.publish(b"x", partition=7)
    with pytest.raises(InvalidOptionError):
        await topic.publish("not bytes")  # type: ignore[arg-type]
    assert (await topic.publish(b"still fine")).offset == 0


async def test_oversized_message_is_refused_on_both_sides(cluster) -> None:
    a, b, _ = await cluster.start(3)
    small = a.topic("small", partitions=1, max_message_bytes=100)
    with pytest.raises(PayloadTooLargeError):
        await small.publish(b"x" * 101)
    # A peer that declared the topic with a larger limit is refused by the sequencer.
    from peer_ring.pubsub._config import TopicConfig
    from peer_ring.pubsub._wire import OutgoingMessage, encode_publish

    key = ring_key("small", 0)
    head = a.node.preference_list(key, 3)[0]
    config = TopicConfig(partitions=1, max_message_bytes=100)
    payload = encode_publish(config, [OutgoingMessage(b"y" * 500, b"", "")])
    with pytest.raises(PayloadTooLargeError):
        open_reply(await b.node.call(head, NAMESPACE, PUBLISH, key, payload))
    assert (await small.publish(b"ok")).offset == 0


async def test_malformed_requests_do_not_hurt_the_node(cluster) -> None:
    a, b, _ = await cluster.start(3)
    key = ring_key("t", 0)
    head = a.node.preference_list(key, 3)[0]
    with pytest.raises(InvalidOptionError, match="malformed"):
        open_reply(await b.node.call(head, NAMESPACE, FETCH, key, b"\x00garbage"))
    with pytest.raises(QuorumNotReachedError):
        await b.node.execute(NAMESPACE, APPEND, key, b"garbage", replication=3, quorum=2)
    assert (await b.topic("t").publish(b"fine")).offset == 0


async def test_ack_of_a_message_not_held(cluster) -> None:
    a, b, _ = await cluster.start(3)
    topic = a.topic("q", partitions=1)
    await topic.publish(b"one")
    async with b.topic("q", partitions=1).subscribe(group="g") as sub:
        msg = await sub.next(timeout=30)
        assert msg is not None
        forged = Message("q", 0, 99, 1, b"", b"", "", 0.0, 1, msg._settle)
        with pytest.raises(NotHeldError):
            await forged.ack()
        await msg.ack()
        await msg.ack()  # a repeated ack of a held message is harmless


async def test_read_below_retention_raises_never_jumps(cluster) -> None:
    a, *_ = await cluster.start(3)
    topic = a.topic("short", partitions=1, max_messages=5)
    for i in range(20):
        await topic.publish(str(i).encode())
    with pytest.raises(OffsetOutOfRangeError) as info:
        [m async for m in topic.read(start=0)]
    assert info.value.first == 15 and info.value.requested == 0
    assert [m.offset async for m in topic.read(start=15)] == [15, 16, 17, 18, 19]


async def test_age_retention_applies_to_an_idle_partition(cluster) -> None:
    a, *_ = await cluster.start(3)
    topic = a.topic("aging", partitions=1, max_age=10.0)
    for i in range(5):
        await topic.publish(str(i).encode())
    assert [m.offset async for m in topic.read(start=0)] == [0, 1, 2, 3, 4]
    await cluster.clock.sleep(12.0)  # no publish meanwhile
    with pytest.raises(OffsetOutOfRangeError) as info:
        [m async for m in topic.read(start=0)]
    assert info.value.first == 5
    assert [m async for m in topic.read(start=5)] == []
