"""One long-poll per sequencer peer: FETCH_MANY sections, its wake-up on an append, and the
fallback to each partition's own FETCH when a section or the whole request fails."""

from __future__ import annotations

import asyncio

import pytest

from peer_ring.core import PeerUnavailableError
from peer_ring.pubsub import InvalidOptionError, NotSequencerError
from peer_ring.pubsub._codec import Reader
from peer_ring.pubsub._config import TopicConfig
from peer_ring.pubsub._wire import (
    FETCH_MANY,
    NAMESPACE,
    FetchReply,
    FetchRequest,
    decode_fetch_sections,
    decode_section_replies,
    encode_fetch_many,
    open_reply,
    ring_key,
)


def _heads(ps, topic: str, partitions: int) -> dict[str, list[bytes]]:  # type: ignore[no-untyped-def]
    out: dict[str, list[bytes]] = {}
    for p in range(partitions):
        key = ring_key(topic, p)
        out.setdefault(ps.client.head(key), []).append(key)
    return out


def _req(config: TopicConfig, wait: float, group: str = "g") -> FetchRequest:
    return FetchRequest(config, group, "consumer-1", 0, 100, wait, 30.0, 5)


def test_fetch_many_payload_roundtrips() -> None:
    config = TopicConfig(partitions=4)
    sections = [(ring_key("t", 1), _req(config, 1.0)), (ring_key("t", 3), _req(config, 0.5, ""))]
    back = decode_fetch_sections(encode_fetch_many(sections))
    assert [(k, r.group, r.wait) for k, r in back] == [(k, r.group, r.wait) for k, r in sections]


async def test_one_fetch_many_carries_a_peers_partitions_and_every_message_arrives(
    cluster,
) -> None:
    nodes = await cluster.start(3)
    consumer = nodes[0]
    topic = consumer.topic("fm", partitions=12)
    heads = _heads(consumer, "fm", 12)
    remote = {h: keys for h, keys in heads.items() if h != consumer.node.address}
    assert any(len(keys) >= 2 for keys in remote.values())
    requests: list[tuple[str, int]] = []  # (command, sections) of every remote fetch
    real = consumer.node.call

    async def recording(node, namespace, command, key, payload, **kwargs):  # type: ignore[no-untyped-def]
        name = getattr(command, "name", command)
        if name == "fetch_many":
            requests.append((name, len(decode_fetch_sections(payload))))
        elif name == "fetch":
            requests.append((name, 1))
        return await real(node, namespace, command, key, payload, **kwargs)

    consumer.node.call = recording  # type: ignore[method-assign]
    async with topic.subscribe(group="g", ack_wait=30.0) as sub:
        await asyncio.sleep(0)
        sent = {f"{i}".encode() for i in range(96)}
        await asyncio.gather(*(topic.publish(d, partition=int(d) % 12) for d in sent))
        got = set()
        while len(got) < len(sent):
            msg = await sub.next(timeout=30)
            assert msg is not None
            got.add(msg.data)
            await msg.ack()
        assert got == sent
        assert sub.health().errors == 0
        assert sub._fetcher.requests > 0
    # Each remote peer's partitions share requests: fewer requests than partition fetches.
    assert any(name == "fetch_many" and n >= 2 for name, n in requests)
    assert len(requests) < sum(n for _, n in requests)


async def test_fetch_many_waits_for_an_append_and_sections_fail_on_their_own(cluster) -> None:
    nodes = await cluster.start(3)
    config = TopicConfig(partitions=8)
    for ps in nodes:
        ps.topic("w", partitions=8)  # the sequencers are placed per declared topic
    peer = max(nodes, key=lambda ps: len(_heads(ps, "w", 8).get(ps.node.address, [])))
    mine = _heads(peer, "w", 8)[peer.node.address]
    other = next(k for h, ks in _heads(peer, "w", 8).items() if h != peer.node.address for k in ks)
    assert len(mine) >= 2
    # Every section empty: the long-poll waits, and an append to one partition wakes it
    # well before its 20 s poll (the fake clock only moves when everything idles).
    start = cluster.clock.monotonic()
    poll = asyncio.ensure_future(
        peer.service.fetch_many([(k, _req(config, 20.0)) for k in mine[:2]])
    )
    for _ in range(5):
        await asyncio.sleep(0)
    assert not poll.done()
    await peer.topic("w", partitions=8).publish(b"wake", partition=int(mine[1].split(b"/")[1]))
    first, second = await poll
    assert cluster.clock.monotonic() - start < 20.0
    assert isinstance(first, FetchReply) and first.entries == []
    assert isinstance(second, FetchReply) and [e.data for e in second.entries] == [b"wake"]
    # Through the handler: a partition this node does not sequence fails on its own.
    payload = encode_fetch_many([(mine[0], _req(config, 0.0)), (other, _req(config, 0.0))])
    raw = await peer.service.handle_fetch_many(None, mine[0], payload)  # type: ignore[arg-type]
    ok, refused = decode_section_replies(open_reply(raw), 2)
    assert isinstance(ok, Reader) and FetchReply.from_reader(ok).entries == []
    assert isinstance(refused, NotSequencerError)


async def test_a_failed_fetch_many_falls_back_to_each_partitions_own_fetch(cluster) -> None:
    nodes = await cluster.start(3)
    consumer = nodes[0]
    topic = consumer.topic("fb", partitions=8)
    real = consumer.node.call
    refused = 0

    async def failing(node, namespace, command, *args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal refused
        if getattr(command, "name", command) == "fetch_many":
            refused += 1
            raise PeerUnavailableError("fetch_many refused by the test")
        return await real(node, namespace, command, *args, **kwargs)

    consumer.node.call = failing  # type: ignore[method-assign]
    sent = {f"{i}".encode() for i in range(40)}
    await asyncio.gather(*(topic.publish(d, partition=int(d) % 8) for d in sent))
    async with topic.subscribe(group="g", ack_wait=30.0) as sub:
        got = set()
        while len(got) < len(sent):
            msg = await sub.next(timeout=30)
            assert msg is not None
            got.add(msg.data)
            msg.ack_nowait()
        await cluster.until(lambda: sub.health().acked == len(sent))
    assert got == sent and refused > 0


async def test_malformed_fetch_many_is_refused_and_the_node_serves_on(cluster) -> None:
    a, b, _ = await cluster.start(3)
    key = ring_key("bad", 0)
    head = a.node.preference_list(key, 3)[0]
    with pytest.raises(InvalidOptionError, match="malformed"):
        open_reply(await b.node.call(head, NAMESPACE, FETCH_MANY, key, b"\x00\x00garbage"))
    config = TopicConfig(partitions=1)
    bad_limit = FetchRequest(config, "g", "c", 0, 0, 0.0, 30.0, 5)  # limit 0
    payload = encode_fetch_many([(key, bad_limit), (key, _req(config, 0.0))])
    replies = decode_section_replies(
        open_reply(await b.node.call(head, NAMESPACE, FETCH_MANY, key, payload)), 2
    )
    assert isinstance(replies[0], InvalidOptionError) and isinstance(replies[1], Reader)
    assert (await b.topic("bad", partitions=1).publish(b"fine")).offset == 0


async def test_a_peers_partitions_move_on_when_it_dies_mid_long_poll(cluster) -> None:
    nodes = await cluster.start(4)
    consumer = nodes[0]
    heads = _heads(consumer, "mv", 8)
    victim = max((h for h in heads if h != consumer.node.address), key=lambda h: len(heads[h]))
    assert len(heads[victim]) >= 2  # the consumer long-polls them with one fetch_many
    topic = consumer.topic("mv", partitions=8)
    before = {f"a{i}".encode() for i in range(40)}
    await asyncio.gather(
        *(
            topic.publish(d, msg_id=d.decode(), partition=i % 8)
            for i, d in enumerate(sorted(before))
        )
    )
    got: dict[bytes, int] = {}
    async with topic.subscribe(group="g", ack_wait=30.0) as sub:
        while len(got) < len(before):
            msg = await sub.next(timeout=30)
            assert msg is not None
            got[msg.data] = got.get(msg.data, 0) + 1
            await msg.ack()
        requests = sub._fetcher.requests
        assert requests > 0
        # The victim dies while the consumer's fetch_many waits on it; the ring drops it.
        await cluster.kill(victim)
        cluster.set_members([a for a in cluster.members if a != victim])
        after = {f"b{i}".encode() for i in range(40)}
        for i, d in enumerate(sorted(after)):
            await topic.publish(d, msg_id=d.decode(), partition=i % 8)
        while len(got) < len(before) + len(after):
            msg = await sub.next(timeout=60)
            assert msg is not None, f"missing: {sorted((before | after) - set(got))[:5]}"
            got[msg.data] = got.get(msg.data, 0) + 1
            await msg.ack()
    assert set(got) == before | after
    assert all(n == 1 for d, n in got.items() if d in before)  # acked before the kill
