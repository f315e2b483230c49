"""Sequences follow the order PUBLISH_MANY requests arrive in, whatever their sections.

A publisher node may have two PUBLISH_MANY requests in flight to one sequencer (the second
leaves while the first is light). When both are served in the same loop turn, the first
one's message for a partition must get the lower offset, also when the first request
carries several sections and the second only one: order within a partition is the order
of arrival at the sequencer, and a publisher's concurrent publishes with one key keep
their call order.
"""

from __future__ import annotations

import asyncio

from peer_ring.pubsub import PubSub, Topic
from peer_ring.pubsub._wire import OutgoingMessage, encode_publish_many, ring_key

TOPIC = "order"
PARTITIONS = 8


async def _sequencer_of_two(cluster: object) -> tuple[PubSub, Topic, int, int]:
    """A 3-node cluster; a node sequencing two partitions p1, p2 of the topic (each warmed
    with one message at offset 0, so the node has taken both over), its topic handle."""
    nodes: list[PubSub] = await cluster.start(3)  # type: ignore[attr-defined]
    topic = nodes[0].topic(TOPIC, partitions=PARTITIONS)
    by_node: dict[str, list[int]] = {}
    for p in range(PARTITIONS):
        by_node.setdefault(topic.sequencer(p) or "", []).append(p)
    address, mine = next((a, ps) for a, ps in by_node.items() if len(ps) >= 2)
    p1, p2 = mine[0], mine[1]
    seq = next(n for n in nodes if n.node.address == address)
    seq_topic = seq.topic(TOPIC, partitions=PARTITIONS)
    for p in (p1, p2):
        await seq_topic.publish(b"warm", partition=p)
    return seq, seq_topic, p1, p2


async def test_requests_served_in_one_turn_keep_their_order(cluster: object) -> None:
    seq, seq_topic, p1, p2 = await _sequencer_of_two(cluster)
    config = seq_topic.config
    k1, k2 = ring_key(TOPIC, p1), ring_key(TOPIC, p2)
    first = encode_publish_many(
        [
            (k1, config, [OutgoingMessage(b"a", b"user:7", "")]),
            (k2, config, [OutgoingMessage(b"x", b"", "")]),
        ]
    )
    second = encode_publish_many([(k1, config, [OutgoingMessage(b"b", b"user:7", "")])])
    handle = seq.service.handle_publish_many
    # Both requests are served in one turn, in arrival order (as two frames read at once).
    await asyncio.gather(handle(None, k1, first), handle(None, k1, second))  # type: ignore[arg-type]
    log = seq.store.state(k1, config).log
    order = [e.data for e in (log.get(s) for s in range(0, 3)) if e is not None]
    assert order == [b"warm", b"a", b"b"]


async def test_a_section_refused_before_its_sequence_fails_alone(cluster: object) -> None:
    """An oversized message fails its own section (PayloadTooLargeError) while it is being
    sequenced; the request's other section is appended and the node serves on."""
    seq, seq_topic, p1, p2 = await _sequencer_of_two(cluster)
    config = seq_topic.config
    k1, k2 = ring_key(TOPIC, p1), ring_key(TOPIC, p2)
    big = b"z" * (config.max_message_bytes + 1)
    payload = encode_publish_many(
        [
            (k1, config, [OutgoingMessage(big, b"", "")]),
            (k2, config, [OutgoingMessage(b"x", b"", "")]),
        ]
    )
    reply = await seq.service.handle_publish_many(None, k1, payload)  # type: ignore[arg-type]
    assert b"max_message_bytes" in reply  # the refused section says why
    assert seq.store.state(k1, config).log.get(1) is None  # nothing of it appended
    log2 = seq.store.state(k2, config).log
    assert [e.data for e in (log2.get(s) for s in range(2)) if e is not None] == [b"warm", b"x"]
    after = await seq_topic.publish(b"after", partition=p1)
    assert after.offset == 1
