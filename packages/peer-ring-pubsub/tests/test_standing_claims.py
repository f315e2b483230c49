"""Standing claims: a group fetch that hands messages out re-arms itself on the sequencer.

The next APPEND claims for the standing claim (its delivery records ride on the APPEND,
as for a parked long-poll) and the consumer's next fetch collects it first. These tests
call the sequencer's service directly (the consumer's fetches are the test's, so nothing
else parks) on an in-memory cluster with a fake clock, and fail when a standing claim
takes more than the consumer's room, reorders a partition, outlives a RELEASE, or keeps
a message from the group past its ``ack_wait``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from peer_ring.pubsub import PubSub
from peer_ring.pubsub._wire import RELEASE, FetchReply, FetchRequest, SettleRequest

KEY = b"st/0"
ACK_WAIT = 30.0


class Seq:
    """The partition's sequencer node and a publisher on another node."""

    def __init__(self, nodes: list[PubSub]) -> None:
        for ps in nodes:
            ps.topic("st", partitions=1)
        head = nodes[0].topic("st", partitions=1).sequencer(0)
        self.node = next(ps for ps in nodes if ps.node.address == head)
        self.topic = next(ps for ps in nodes if ps.node.address != head).topic("st", partitions=1)
        self.config = self.topic.config
        self.sent = 0  # replication requests (APPEND, with or without entries; GROUP)
        real_many, real_one = self.node.node.execute_many, self.node.node.execute

        async def count_many(namespace, command, items, **kwargs):  # type: ignore[no-untyped-def]
            items = list(items)
            self.sent += 1
            return await real_many(namespace, command, items, **kwargs)

        async def count_one(namespace, command, key, payload, **kwargs):  # type: ignore[no-untyped-def]
            self.sent += 1
            return await real_one(namespace, command, key, payload, **kwargs)

        self.node.node.execute_many = count_many  # type: ignore[method-assign]
        self.node.node.execute = count_one  # type: ignore[method-assign,assignment]

    async def fetch(self, consumer: str, limit: int, wait: float = 0.0) -> FetchReply:
        req = FetchRequest(self.config, "g", consumer, 0, limit, wait, ACK_WAIT, 5)
        return await self.node.service.fetch(KEY, req)

    async def publish(self, *datas: bytes) -> None:
        for data in datas:
            await self.topic.publish(data)

    def standing(self, consumer: str) -> Any:
        return self.node.leaders.leaders[KEY].standing.get(("g", consumer))


def datas(reply: FetchReply) -> list[bytes]:
    return [e.data for e in reply.entries]


async def test_the_next_append_claims_for_the_consumer_that_fetched_last(cluster: Any) -> None:
    s = Seq(await cluster.start(3))
    assert datas(await s.fetch("c", 3)) == []  # the group exists, nothing to claim
    assert s.standing("c") is None  # nothing handed out: nothing re-armed
    await s.publish(b"m0")
    assert datas(await s.fetch("c", 3)) == [b"m0"]
    park = s.standing("c")
    assert park is not None and park.req.limit == 2  # the room left of that request
    sent, piggybacked = s.sent, s.node.service.piggybacked
    await s.publish(b"m1")  # no fetch of "c" is out
    assert park.reply is not None and datas(park.reply) == [b"m1"]
    assert s.node.service.piggybacked == piggybacked + 1
    assert s.sent == sent + 1, "the delivery record took a request of its own"
    await s.publish(b"m2")  # the next APPEND claims more for it, up to its room
    assert datas(park.reply) == [b"m1", b"m2"]
    await s.publish(b"m3")  # full: left for the next fetch
    assert datas(park.reply) == [b"m1", b"m2"]
    assert s.sent == sent + 3  # one APPEND each
    assert datas(await s.fetch("c", 3)) == [b"m1", b"m2", b"m3"]
    assert s.node.service.collected == 1


async def test_a_standing_claim_takes_at_most_the_room_and_keeps_the_order(cluster: Any) -> None:
    s = Seq(await cluster.start(3))
    await s.fetch("c", 3)
    await s.publish(b"m0")
    assert datas(await s.fetch("c", 3)) == [b"m0"]  # standing: room 2
    await asyncio.gather(*(s.topic.publish(b"m%d" % i) for i in range(1, 5)))
    park = s.standing("c")
    assert park.reply is not None
    claimed = datas(park.reply)
    assert 1 <= len(claimed) <= 2, "a standing claim takes at most the room left"
    group = s.node.store.state(KEY, s.config).groups["g"]
    assert sum(p.consumer == "c" for p in group.pending.values()) == 1 + len(claimed)
    rest = [b"m%d" % i for i in range(1, 5) if b"m%d" % i not in claimed]
    assert datas(await s.fetch("d", 10)) == rest  # a competing consumer: the others
    assert datas(await s.fetch("c", 10)) == claimed  # in partition order
    assert claimed == sorted(claimed)


async def test_a_release_frees_what_a_standing_claim_holds(cluster: Any) -> None:
    s = Seq(await cluster.start(3))
    await s.fetch("c", 3)
    await s.publish(b"m0")
    reply = await s.fetch("c", 3)
    await s.publish(b"m1")
    assert s.standing("c").reply is not None  # m1 claimed for "c"
    start = cluster.clock.monotonic()
    release = SettleRequest(s.config, "g", "c", RELEASE, 0.0, [])
    await s.node.service.settle(KEY, release)
    assert s.standing("c") is None
    assert datas(reply) == [b"m0"]
    assert datas(await s.fetch("d", 10, wait=5.0)) == [b"m0", b"m1"]
    assert cluster.clock.monotonic() - start < ACK_WAIT  # not after an ack window
    await s.publish(b"m2")
    assert s.standing("c") is None  # a released consumer is not re-armed
    assert datas(await s.fetch("d", 10)) == [b"m2"]


async def test_a_claim_nobody_collects_is_redelivered_after_its_ack_wait(cluster: Any) -> None:
    s = Seq(await cluster.start(3))
    await s.fetch("c", 3)
    await s.publish(b"m0")
    await s.fetch("c", 3)
    await s.publish(b"m1")  # claimed for "c", which never fetches again
    start = cluster.clock.monotonic()
    assert datas(await s.fetch("d", 10)) == []  # held by "c" within its ack window
    got = await s.fetch("d", 10, wait=2 * ACK_WAIT)
    assert [(e.data, n) for e, n in zip(got.entries, got.deliveries, strict=True)][-1] == (
        b"m1",
        2,
    )
    assert cluster.clock.monotonic() - start >= ACK_WAIT
