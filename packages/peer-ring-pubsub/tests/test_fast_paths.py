"""The throughput paths: local sequencer calls, single-copy partitions, ack_nowait, and the
compact encodings (group runs, packed publish payloads and replies)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from peer_ring.pubsub import PartitionUnavailableError
from peer_ring.pubsub._codec import CodecError, Reader, Writer
from peer_ring.pubsub._config import TopicConfig
from peer_ring.pubsub._group import GroupState, Pending
from peer_ring.pubsub._log import Entry
from peer_ring.pubsub._state import decode_group_state, encode_group_state
from peer_ring.pubsub._wire import (
    OutgoingMessage,
    decode_publish,
    decode_publish_results,
    encode_publish,
    encode_publish_results,
    ring_key,
)


def _roundtrip(state: GroupState) -> GroupState:
    w = Writer()
    encode_group_state(w, state)
    return decode_group_state(Reader(w.getvalue()))


def test_group_runs_roundtrip_and_share_one_pending_per_run() -> None:
    a = Pending("c1", 1, 0, 10.0, 5.0)
    b = Pending("c2", 2, 1, 11.0, 5.0)
    state = GroupState(floor=3, next=40)
    state.done = {5, 6, 7, 9, 20}
    state.pending = dict.fromkeys(range(10, 20), a) | {
        21: b,
        22: b,
        23: a,
        30: Pending("c1", 1, 0, 10.0, 5.0),
    }
    back = _roundtrip(state)
    assert (back.floor, back.next, back.done, back.pending) == (
        state.floor,
        state.next,
        state.done,
        state.pending,
    )
    # One decoded object per run: 10..19 (a), 21..22 (b), 23 (a), 30 (equal to a: no run,
    # 30 does not follow 23).
    assert len({id(p) for p in back.pending.values()}) == 4
    w = Writer()
    encode_group_state(w, state)
    per_message = 8 * 2 + 4 + 2 + 8 * 4  # what one pending entry alone would take
    assert len(w.getvalue()) < 12 * per_message  # 14 pending + 5 done, in a few runs


def test_a_corrupt_run_length_is_a_codec_error() -> None:
    w = Writer().u64(0).u64(10).u64(1).u64(0).u64(1 << 40).u64(0)
    with pytest.raises(CodecError):
        decode_group_state(Reader(w.getvalue()))


def test_publish_payload_and_results_roundtrip() -> None:
    config = TopicConfig(partitions=3)
    messages = [
        OutgoingMessage(b"plain", b"", ""),
        OutgoingMessage(b"keyed", b"user:7", ""),
        OutgoingMessage(b"", b"k", "id-\u00e9"),
        OutgoingMessage(b"x" * 1000, b"", "only-id"),
    ]
    got_config, got = decode_publish(encode_publish(config, messages))
    assert got_config == config and got == messages
    entries = [(Entry(7, 100 + i, 0.0, "", b"", b""), i % 2 == 1) for i in range(5)]
    r = Reader(encode_publish_results(entries))
    assert decode_publish_results(r) == [(7, 100 + i, i % 2 == 1) for i in range(5)]
    r.done()
    with pytest.raises(CodecError):  # truncated reply
        decode_publish_results(Reader(encode_publish_results(entries)[:-1]))
    bad = bytearray(encode_publish(config, [OutgoingMessage(b"d", b"", "ab")]))
    bad[-1] = 0xFF  # invalid UTF-8 in the msg_id
    with pytest.raises(CodecError):
        decode_publish(bytes(bad))


async def test_the_sequencers_own_node_and_another_node_see_the_same_log(cluster) -> None:
    nodes = await cluster.start(3)
    key = ring_key("same", 0)
    head = nodes[0].client.head(key)
    local = cluster.nodes[head]
    remote = next(ps for ps in nodes if ps.node.address != head)
    # Publishes from the sequencer's own node take the local path, the others the routed one;
    # both land in one order with consecutive offsets.
    offsets = []
    for i in range(10):
        ps = local if i % 2 == 0 else remote
        r = await ps.topic("same", partitions=1).publish(str(i).encode(), msg_id=f"m{i}")
        offsets.append(r.offset)
    assert offsets == list(range(10))
    dup = await local.topic("same", partitions=1).publish(b"0", msg_id="m0")
    assert dup.duplicate and dup.offset == 0
    # The sequencer's own replica merged the request object it sent, the others decoded it:
    # every replica holds the same entries.
    logs = [
        [(e.seq, e.data) for e in ps.store.states[key].log.iter_entries()]
        for ps in cluster.nodes.values()
        if key in ps.store.states
    ]
    assert len(logs) == 3 and all(log == logs[0] for log in logs)
    assert [data for _, data in logs[0]] == [str(i).encode() for i in range(10)]
    assert local.store._own_appends == {}  # nothing left behind
    for ps in (local, remote):
        replay = [m.data async for m in ps.topic("same", partitions=1).read(start=0)]
        assert replay == [str(i).encode() for i in range(10)]


async def test_ack_nowait_acks_in_batches_and_reports_failures_in_health(cluster) -> None:
    a, b, _ = await cluster.start(3)
    topic = a.topic("fast", partitions=2)
    for i in range(30):
        await topic.publish(str(i).encode())
    async with b.topic("fast", partitions=2).subscribe(group="g", ack_wait=5.0) as sub:
        seen = []
        for _ in range(30):
            msg = await sub.next(timeout=30)
            assert msg is not None
            seen.append(msg)
            msg.ack_nowait()
            msg.ack_nowait()  # a second call is a no-op
        await cluster.until(lambda: sub.health().acked == 30)
        assert sub.health().in_flight == 0 and sub.health().errors == 0
    # Nothing comes back to a new member of the group: every ack was applied.
    async with b.topic("fast", partitions=2).subscribe(group="g", ack_wait=5.0) as again:
        assert await again.next(timeout=12.0) is None
    # A message redelivered since: the late ack_nowait is recorded, not raised.
    await topic.publish(b"late", partition=0)
    sub1 = b.topic("fast", partitions=2).subscribe(group="g", ack_wait=1.0, partitions=[0])
    sub2 = b.topic("fast", partitions=2).subscribe(group="g", ack_wait=1.0, partitions=[0])
    async with sub1, sub2:
        first = await sub1.next(timeout=30)
        assert first is not None and first.data == b"late"
        # After ack_wait it is redelivered to a live member: sub2, or first sub1 again (a
        # group subscription keeps two fetches per partition, one of them parked there),
        # then sub2 after the next ack_wait. Either way sub1's first delivery is stale.
        second = await sub2.next(timeout=30)
        assert second is not None and second.data == b"late" and second.deliveries >= 2
        first.ack_nowait()
        await cluster.until(lambda: sub1.health().errors == 1)
        assert "StaleAckError" in sub1.health().last_error
        await second.ack()


async def test_single_copy_partitions_replicate_by_a_local_merge(single_copy_cluster) -> None:
    a, b = await single_copy_cluster.start(2)
    topic = a.topic("one", partitions=8)
    calls = {"execute": 0}
    for ps in (a, b):
        real = ps.node.execute

        def counting(*args, real=real, **kwargs):  # type: ignore[no-untyped-def]
            calls["execute"] += 1
            return real(*args, **kwargs)

        ps.node.execute = counting  # type: ignore[method-assign]
    for i in range(20):
        await topic.publish(str(i).encode(), key=str(i))
    got = []
    async with b.topic("one", partitions=8).subscribe(group="g") as sub:
        for _ in range(20):
            msg = await sub.next(timeout=30)
            assert msg is not None
            got.append(msg.data)
            await msg.ack()
    assert sorted(got) == sorted(str(i).encode() for i in range(20))
    # Only the takeovers' learn/promise rounds go through execute (2 per partition):
    # appends and group updates of a single-copy partition are local merges.
    assert calls["execute"] <= 2 * 8
    # A partition whose only copy was on a stopped node: a typed, retryable error.
    heads = {p: a.client.head(ring_key("one", p)) for p in range(8)}
    assert set(heads.values()) == {a.node.address, b.node.address}
    lost = next(p for p, head in heads.items() if head == b.node.address)
    await single_copy_cluster.kill(b.node.address)
    with pytest.raises(PartitionUnavailableError):
        await a.topic("one", partitions=8).publish(b"x", partition=lost, timeout=0.5)


def test_truncated_or_corrupted_bulk_payloads_are_codec_errors() -> None:
    import random

    from peer_ring.pubsub._log import Ballot
    from peer_ring.pubsub._wire import AppendRequest, FetchReply

    config = TopicConfig()
    entries = [
        Entry(3, i, 1.5, f"id{i}" if i % 2 else "", b"k" * (i % 3), b"d" * i) for i in range(8)
    ]
    payloads = [
        AppendRequest(config, Ballot(3, "n"), 0, 5, entries).encode(),
        FetchReply(entries, [1] * 8, 8, 0).encode(),
        encode_publish(config, [OutgoingMessage(b"x" * i, b"k", f"m{i}") for i in range(8)]),
    ]
    decoders = [
        AppendRequest.decode,
        FetchReply.decode,
        decode_publish,
    ]
    assert AppendRequest.decode(payloads[0]).entries == entries
    assert FetchReply.decode(payloads[1]).entries == entries
    rnd = random.Random(7)
    for payload, decode in zip(payloads, decoders, strict=True):
        for cut in range(len(payload)):
            with pytest.raises((CodecError, ValueError)):
                decode(payload[:cut])
        for _ in range(300):  # random byte flips: decoded or refused, never another error
            raw = bytearray(payload)
            for _ in range(rnd.randint(1, 4)):
                raw[rnd.randrange(len(raw))] = rnd.randrange(256)
            with contextlib.suppress(CodecError, ValueError):
                decode(bytes(raw))


async def test_publish_many_sections_succeed_or_fail_on_their_own(cluster) -> None:
    from peer_ring.pubsub import NotSequencerError
    from peer_ring.pubsub._wire import decode_publish_many, encode_publish_many, open_reply

    nodes = await cluster.start(3)
    config = TopicConfig(partitions=8)
    peer = nodes[1]
    keys = [ring_key("multi", p) for p in range(8)]
    mine = [k for k in keys if peer.client.head(k) == peer.node.address]
    other = [k for k in keys if peer.client.head(k) != peer.node.address]
    assert mine and other
    payload = encode_publish_many(
        [
            (mine[0], config, [OutgoingMessage(b"a", b"", ""), OutgoingMessage(b"b", b"", "")]),
            (other[0], config, [OutgoingMessage(b"c", b"", "")]),
        ]
    )
    raw = await peer.service.handle_publish_many(None, mine[0], payload)  # type: ignore[arg-type]
    ok, refused = decode_publish_many(open_reply(raw), 2)
    assert isinstance(ok, list) and [seq for _, seq, _ in ok] == [0, 1]
    assert isinstance(refused, NotSequencerError)
    # Through the client: publishes from one node to every partition (most of them on
    # other peers, several per request) all land, in order per partition.
    topic = nodes[0].topic("multi", partitions=8)
    results = await asyncio.gather(
        *(topic.publish(f"{i}".encode(), partition=i % 8) for i in range(64))
    )
    for p in range(8):
        offsets = [r.offset for r in results if r.partition == p]
        assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets) == 8
    got = sorted([m.data async for m in topic.read(start=0)])
    assert got == sorted([b"a", b"b"] + [f"{i}".encode() for i in range(64)])


async def test_acks_of_several_partitions_share_one_settle_many(cluster) -> None:
    from peer_ring.pubsub import NotHeldError
    from peer_ring.pubsub._wire import (
        ACK,
        SettleRequest,
        decode_section_replies,
        encode_settle_many,
        open_reply,
    )

    nodes = await cluster.start(3)
    consumer_node = nodes[0]
    topic = consumer_node.topic("acks", partitions=8)
    for i in range(40):
        await topic.publish(f"{i}".encode(), partition=i % 8)
    calls: list[str] = []
    real = consumer_node.node.call

    async def recording(node, namespace, command, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(getattr(command, "name", command))
        return await real(node, namespace, command, *args, **kwargs)

    consumer_node.node.call = recording  # type: ignore[method-assign]
    async with topic.subscribe(group="g", ack_wait=30.0) as sub:
        msgs = []
        for _ in range(40):
            msg = await sub.next(timeout=30)
            assert msg is not None
            msgs.append(msg)
        for msg in msgs:  # all at once: batched per sequencer peer
            msg.ack_nowait()
        await cluster.until(lambda: sub.health().acked == 40)
        assert sub.health().errors == 0
    assert "settle_many" in calls
    async with topic.subscribe(group="g") as again:  # nothing left for the group
        assert await again.next(timeout=12.0) is None
    # On the sequencer: each section succeeds or fails on its own.
    all_keys = [ring_key("acks", p) for p in range(8)]

    def heads(ps) -> list[bytes]:  # type: ignore[no-untyped-def]
        return [k for k in all_keys if ps.client.head(k) == ps.node.address]

    peer = max(nodes, key=lambda ps: len(heads(ps)))
    keys = heads(peer)
    assert len(keys) >= 2
    config = topic.config
    payload = encode_settle_many(
        [
            (keys[0], SettleRequest(config, "g", "nobody", ACK, 0.0, [])),
            (keys[1], SettleRequest(config, "g", "nobody", ACK, 0.0, [(10**6, 1)])),
        ]
    )
    raw = await peer.service.handle_settle_many(None, keys[0], payload)  # type: ignore[arg-type]
    ok, refused = decode_section_replies(open_reply(raw), 2)
    assert not isinstance(ok, BaseException)
    assert isinstance(refused, NotHeldError)


async def test_a_peer_batch_is_split_by_bytes(cluster) -> None:
    nodes = await cluster.start(3)
    key = ring_key("big", 0)
    publisher = next(ps for ps in nodes if ps.client.head(key) != ps.node.address)
    topic = publisher.topic("big", partitions=4, max_message_bytes=600_000)
    remote = [0]
    sizes: list[int] = []
    real = publisher.node.call

    async def recording(node, namespace, command, key=b"", payload=b"", **kwargs):  # type: ignore[no-untyped-def]
        if getattr(command, "name", command) == "publish_many":
            sizes.append(len(payload))
        return await real(node, namespace, command, key, payload, **kwargs)

    publisher.node.call = recording  # type: ignore[method-assign]
    data = b"z" * 500_000
    results = await asyncio.gather(*(topic.publish(data, partition=remote[0]) for _ in range(6)))
    assert [r.offset for r in results] == list(range(6))
    assert sizes and max(sizes) < 2 * 1024 * 1024  # never the six messages in one request


async def test_a_cancelled_local_publish_leaves_the_others_and_the_log_whole(
    single_copy_cluster,
) -> None:
    # On a single-copy partition a publisher awaits its entry's future directly (no
    # shield): cancelling it cancels that future, which the batch must skip.
    a, b = await single_copy_cluster.start(2)
    local = a if a.topic("cancel", partitions=1).sequencer(0) == a.node.address else b
    topic = local.topic("cancel", partitions=1)  # its sequencer's node: the local path
    tasks = [asyncio.ensure_future(topic.publish(b"m%d" % i)) for i in range(40)]
    await asyncio.sleep(0)
    for t in tasks[5:40:7]:
        t.cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    cancelled = [r for r in done if isinstance(r, asyncio.CancelledError)]
    offsets = [r.offset for r in done if not isinstance(r, BaseException)]
    assert cancelled and len(offsets) + len(cancelled) == 40
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    after = await topic.publish(b"after")
    stored = [m.data async for m in topic.read()]
    assert after.offset == len(stored) - 1 and stored[-1] == b"after"
    assert all(
        stored[r.offset] == b"m%d" % i
        for i, r in enumerate(done)
        if not isinstance(r, BaseException)
    )


async def test_publishes_of_one_turn_join_the_append_that_has_not_left(
    single_copy_cluster,
) -> None:
    a, b = await single_copy_cluster.start(2)
    local = a if a.topic("join", partitions=1).sequencer(0) == a.node.address else b
    topic = local.topic("join", partitions=1)
    await topic.publish(b"warm")  # the takeover is done
    sizes: list[int] = []
    real = local.store.apply_append

    def recording(key, req):  # type: ignore[no-untyped-def]
        sizes.append(len(req.entries))
        return real(key, req)

    local.store.apply_append = recording  # type: ignore[method-assign]
    # Started in one turn: the first makes the APPEND, the rest join it before it leaves
    # (before, 1 + 7: the others waited for the first one's round).
    results = await asyncio.gather(*(topic.publish(b"m%d" % i) for i in range(8)))
    assert sizes == [8]
    assert [r.offset for r in results] == list(range(1, 9))
    sizes.clear()
    results = await asyncio.gather(*(topic.publish(b"n%d" % i) for i in range(600)))
    assert sizes == [512, 88]  # MAX_BATCH still bounds an APPEND
    assert [r.offset for r in results] == list(range(9, 609))
