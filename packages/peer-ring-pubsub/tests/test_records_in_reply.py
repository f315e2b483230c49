"""Delivery records in the fetch reply: a consumer on a node holding a replica of the
partition merges the records of messages claimed after their commit from the reply (under
the epoch fence) before handing them out, so the sequencer's copy and that node's make the
W = 2 copies without a replication round trip before the reply."""

from __future__ import annotations

import asyncio
from typing import Any

from peer_ring.pubsub import PubSub
from peer_ring.pubsub._config import TopicConfig
from peer_ring.pubsub._fetch_batch import FetchBatcher
from peer_ring.pubsub._group import GroupState, Pending
from peer_ring.pubsub._log import Ballot, Entry
from peer_ring.pubsub._wire import FetchReply, FetchRequest, ring_key

TOPIC = "rr"


def _holders(nodes: list[PubSub], key: bytes, seq: int, consumer: str) -> int:
    """Nodes whose replica records ``seq`` as held by ``consumer`` (or done)."""
    count = 0
    for ps in nodes:
        state = ps.store.get(key)
        group = state.groups.get("g") if state is not None else None
        if group is None:
            continue
        pending = group.pending.get(seq)
        if seq < group.floor or seq in group.done or (pending and pending.consumer == consumer):
            count += 1
    return count


def test_the_flag_and_the_records_round_trip_and_are_absent_by_default() -> None:
    config = TopicConfig(partitions=2)
    plain = FetchRequest(config, "g", "c", 0, 10, 1.0, 30.0, 5)
    asked = FetchRequest(config, "g", "c", 0, 10, 1.0, 30.0, 5, records_here=True)
    assert FetchRequest.decode(plain.encode()).records_here is False
    assert FetchRequest.decode(asked.encode()).records_here is True
    assert len(asked.encode()) == len(plain.encode()) + 8  # the old encoding when unset
    entry = Entry(3, 7, 1.0, "", b"", b"x")
    delta = GroupState(0, 8, pending={7: Pending("c", 1, 1, 30.0, 30.0)})
    back = FetchReply.decode(FetchReply([entry], [1], 8, 0, (3, delta)).encode())
    assert back.records is not None and back.records[0] == 3
    assert back.records[1].pending[7].consumer == "c"
    assert FetchReply.decode(FetchReply([entry], [1], 8, 0).encode()).records is None


async def test_records_of_committed_messages_travel_in_the_reply_and_are_on_two_replicas(
    cluster: Any,
) -> None:
    nodes = await cluster.start(3)
    key = ring_key(TOPIC, 0)
    head = nodes[0].client.head(key)
    consumer_node = next(ps for ps in nodes if ps.node.address != head)
    sequencer = next(ps for ps in nodes if ps.node.address == head)
    for ps in nodes:
        ps.topic(TOPIC, partitions=1)
    publisher = sequencer.topic(TOPIC, partitions=1)
    topic = consumer_node.topic(TOPIC, partitions=1)
    seen: list[tuple[int, int]] = []  # (offset, replicas recording it held) at delivery
    async with topic.subscribe(group="g", ack_wait=30.0, start="earliest") as sub:
        await publisher.publish(b"first")  # the group exists; the consumer gets it
        msg = await sub.next(timeout=30.0)
        assert msg is not None
        msg.ack_nowait()
        for round_ in range(4):
            # Committed before the consumer asks: claimed after their commit.
            await asyncio.gather(*(publisher.publish(b"%d-%d" % (round_, i)) for i in range(5)))
            for _ in range(5):
                msg = await sub.next(timeout=30.0)
                assert msg is not None
                seen.append((msg.offset, _holders(nodes, key, msg.offset, sub.consumer)))
                msg.ack_nowait()
    assert sequencer.service.records_in_reply > 0
    # No message was handed out before two replicas recorded it as this consumer's.
    assert all(holders >= 2 for _, holders in seen), seen


async def test_a_reply_whose_records_are_refused_here_delivers_nothing(cluster: Any) -> None:
    nodes = await cluster.start(3)
    key = ring_key(TOPIC, 0)
    config = TopicConfig(partitions=1)
    consumer_node = nodes[0]
    consumer_node.topic(TOPIC, partitions=1)
    batcher = FetchBatcher(consumer_node.client, lambda task: None)
    req = FetchRequest(config, "g", "c", 0, 10, 1.0, 30.0, 5, records_here=True)
    entry = Entry(1, 0, 1.0, "", b"", b"x")
    delta = GroupState(0, 1, pending={0: Pending("c", 1, 1, 30.0, 30.0)})
    state = consumer_node.store.state(key, config)
    state.log.promised = Ballot(5, "elsewhere")  # a newer sequencer was promised here
    refused = batcher._merge_records(key, req, FetchReply([entry], [1], 1, 0, (1, delta)))
    assert isinstance(refused, Exception) and "refused" in str(refused)
    assert "g" not in state.groups or 0 not in state.groups["g"].pending
    # From the epoch promised, the same records merge and the reply is handed out.
    ok = batcher._merge_records(key, req, FetchReply([entry], [1], 1, 0, (5, delta)))
    assert isinstance(ok, FetchReply) and ok.records is None
    assert state.groups["g"].pending[0].consumer == "c"
    # Records nobody asked for are never handed out unmerged.
    plain = FetchRequest(config, "g", "c", 0, 10, 1.0, 30.0, 5)
    stray = batcher._merge_records(key, plain, FetchReply([entry], [1], 1, 0, (5, delta)))
    assert isinstance(stray, Exception)


async def test_the_sequencer_keeps_the_round_trip_unless_the_requester_is_a_replica(
    cluster: Any,
) -> None:
    nodes = await cluster.start(3)
    key = ring_key(TOPIC, 0)
    head = nodes[0].client.head(key)
    sequencer = next(ps for ps in nodes if ps.node.address == head)
    other = next(ps for ps in nodes if ps.node.address != head)
    for ps in nodes:
        ps.topic(TOPIC, partitions=1)
    publisher = sequencer.topic(TOPIC, partitions=1)
    await publisher.publish(b"a")
    config = publisher.config
    leader = sequencer.leaders.leaders[key]
    service = sequencer.service
    entry = Entry(leader.ballot.epoch, leader.commit, 1.0, "", b"", b"a")
    reply = FetchReply([entry], [1], leader.commit + 1, 0)
    asked = FetchRequest(config, "g", "c", 0, 10, 1.0, 30.0, 5, records_here=True)
    plain = FetchRequest(config, "g", "c", 0, 10, 1.0, 30.0, 5)
    assert service._records_to_requester(leader, asked, other.node.address, reply)
    assert not service._records_to_requester(leader, plain, other.node.address, reply)
    assert not service._records_to_requester(leader, asked, "10.9.9.9:1", reply)  # no replica
    assert not service._records_to_requester(leader, asked, sequencer.node.address, reply)
    assert not service._records_to_requester(leader, asked, "", reply)
    uncommitted = Entry(leader.ballot.epoch, leader.commit + 1, 1.0, "", b"", b"b")
    ahead = FetchReply([entry, uncommitted], [1, 1], leader.commit + 2, 0)
    assert not service._records_to_requester(leader, asked, other.node.address, ahead)
    assert not service._records_to_requester(
        leader, asked, other.node.address, FetchReply([], [], 0, 0)
    )
    # With W = 3 two copies are not enough: the records replicate before the reply.
    sequencer.leaders.quorum = 3
    assert not service._records_to_requester(leader, asked, other.node.address, reply)
    sequencer.leaders.quorum = 2
    # This node's own copy fenced off: it cannot be one of the two.
    sequencer.store.state(key, config).log.promised = Ballot(leader.ballot.epoch + 1, "x")
    assert not service._records_to_requester(leader, asked, other.node.address, reply)
