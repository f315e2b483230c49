"""Forwarded hits travel as one ``hits`` message per batch (not ``execute_many``), each hit
with its own answer; the owner's replication shares one future per replication message."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest

from peer_ring.core.testing import settle_loop
from peer_ring.ratelimit import CorruptStateError, Limit, RateLimiter
from peer_ring.ratelimit._hits import read_answers
from peer_ring.ratelimit._replicator import Replicator
from peer_ring.ratelimit._wire import (
    ANSWER_BAD,
    ANSWER_NOT_OWNER,
    ANSWER_OK,
    encode_hit,
    encode_hits,
    split_status,
    unpack_records,
)

WINDOW = Limit(100, 60.0, algorithm="fixed_window")


def owned_by(rl: RateLimiter, owner: str, n: int, prefix: str = "k") -> list[str]:
    keys = (f"{prefix}:{i}" for i in range(100_000))
    return [k for k in keys if rl.node.preference_list(k.encode(), 1)[0] == owner][:n]


def count_messages(rl: RateLimiter) -> dict[str, int]:
    """Count the forwarding node's outgoing calls by command, and its execute_many calls."""
    counts: dict[str, int] = {}
    node = rl.node
    call, many = node.call, node.execute_many

    async def counted_call(address: str, ns: str, command: Any, *a: Any, **k: Any) -> bytes:
        name = getattr(command, "name", str(command))
        counts[name] = counts.get(name, 0) + 1
        return await call(address, ns, command, *a, **k)

    async def counted_many(ns: str, command: Any, *a: Any, **k: Any) -> Any:
        counts["execute_many"] = counts.get("execute_many", 0) + 1
        return await many(ns, command, *a, **k)

    node.call, node.execute_many = counted_call, counted_many  # type: ignore[method-assign]
    return counts


@pytest.mark.parametrize("cluster", [{"nodes": 3}], indirect=True)
async def test_a_batch_of_forwarded_hits_is_one_hits_message(cluster: list[RateLimiter]) -> None:
    sender = cluster[0]
    owner = cluster[1].node.address
    keys = owned_by(sender, owner, 20)
    counts = count_messages(sender)
    out = await asyncio.gather(*(sender.hit(k, WINDOW, 2) for k in keys))
    assert all(d.allowed and d.remaining == 98 and d.source == "owner" for d in out)
    assert counts == {"hits_relay": 1}  # one message for 20 hits, no execute_many
    assert sender.stats()["batches"] == 1
    # Every new state is on both replicas (with the answer or by replication).
    for k in keys:
        replicas = sender.node.preference_list(k.encode(), 2)
        held = [rl.store.get(k.encode()) for rl in cluster if rl.node.address in replicas]
        assert len(held) == 2 and all(e is not None and e.seq == 1 for e in held)


@pytest.mark.parametrize("cluster", [{"nodes": 3}], indirect=True)
async def test_each_hit_of_a_batch_gets_its_own_answer(cluster: list[RateLimiter]) -> None:
    sender, receiver = cluster[0], cluster[1]
    me = receiver.node.address
    mine = owned_by(sender, me, 1, "own")[0].encode()
    other = owned_by(sender, cluster[2].node.address, 1, "other")[0].encode()
    bad = bytearray(encode_hit(WINDOW, 1))
    bad[2:10] = (0).to_bytes(8, "big")  # a limit of 0: refused for this hit only
    payload = encode_hits(
        [(mine, encode_hit(WINDOW, 3)), (other, encode_hit(WINDOW, 1)), (mine, bytes(bad))]
    )
    raw = await sender.node.call(me, "ratelimit", "hits", b"", payload, timeout=1.0)
    statuses = [split_status(a)[0] for a in unpack_records(raw)]
    assert statuses == [ANSWER_OK, ANSWER_NOT_OWNER, ANSWER_BAD]
    assert receiver.store.get(mine) is not None and receiver.store.get(other) is None
    # The forwarder's reading: a decision, then typed errors (which get the fail policy).
    p = sender.node.partition_for_key
    items = [(mine, b"", p(mine)), (other, b"", p(other)), (mine, b"", p(mine))]
    decisions = read_answers(sender, me, items, raw)
    assert not isinstance(decisions[0], BaseException) and decisions[0].remaining == 97
    assert isinstance(decisions[1], Exception) and "does not own" in str(decisions[1])
    assert isinstance(decisions[2], CorruptStateError)
    with pytest.raises(CorruptStateError):
        read_answers(sender, me, items[:2], raw)  # answers and hits must match one to one


@pytest.mark.parametrize("cluster", [{"nodes": 3}], indirect=True)
async def test_a_refused_hit_gets_the_fail_policy_and_the_others_are_decided(
    cluster: list[RateLimiter],
) -> None:
    sender = cluster[0]
    owner = cluster[1]
    keys = owned_by(sender, owner.node.address, 3)
    # The owner's partition of keys[0] is "not ready": that hit alone is refused.
    p0 = owner.node.partition_for_key(keys[0].encode())
    ready = owner.node.partition_ready
    owner.node.partition_ready = lambda p: p != p0 and ready(p)  # type: ignore[method-assign]
    out = await asyncio.gather(*(sender.hit(k, WINDOW) for k in keys))
    assert [d.source for d in out] == ["local-estimate", "owner", "owner"]
    assert sender.stats()["owner_unavailable"] == 1


def gated_send() -> tuple[
    Callable[[Sequence[bytes], list[bytes]], Awaitable[None]],
    list[list[bytes]],
    list[asyncio.Event],
]:
    """A replicator's ``send`` that records each message's keys and waits until its gate
    (one event per message, in order) is set: ``send, sent, gates = gated_send()``."""
    sent: list[list[bytes]] = []
    gates: list[asyncio.Event] = []

    async def send(keys: Sequence[bytes], relays: list[bytes]) -> None:
        sent.append(list(keys))
        gate = asyncio.Event()
        gates.append(gate)
        await gate.wait()

    return send, sent, gates


async def test_replicator_shares_one_future_per_message_and_coalesces_keys() -> None:
    send, sent, gates = gated_send()

    rep = Replicator(send, max_in_flight=1)
    first = [rep.submit(k) for k in (b"a", b"b", b"a")]
    assert first[0] is first[1] is first[2]  # one future for the whole message
    await asyncio.sleep(0)
    assert sent == [[b"a", b"b"]]  # a key decided twice travels once
    later = [rep.submit(k) for k in (b"c", b"a")]
    assert later[0] is later[1] and later[0] is not first[0]
    await settle_loop()
    assert sent == [[b"a", b"b"]] and rep.in_flight == 1  # the bound: one message at a time
    gates[0].set()
    await first[0]
    assert not later[0].done()
    await settle_loop()
    assert sent == [[b"a", b"b"], [b"c", b"a"]]
    gates[1].set()
    await later[0]
    await rep.close()
    assert rep.in_flight == 0


async def test_replicator_sends_keys_without_waiting_at_a_light_load() -> None:
    send, sent, gates = gated_send()

    rep = Replicator(send, max_in_flight=1, light_in_flight=2)
    a = rep.submit(b"a")
    await settle_loop()
    b = rep.submit(b"b")
    await settle_loop()
    assert sent == [[b"a"], [b"b"]] and rep.in_flight == 2  # a lone message in flight: b went
    c = [rep.submit(k) for k in (b"c", b"d")]
    await settle_loop()
    assert sent == [[b"a"], [b"b"]]  # two in flight (light_in_flight): c and d wait
    gates[0].set()
    await a
    await settle_loop()
    assert sent == [[b"a"], [b"b"], [b"c", b"d"]]
    e = rep.submit(b"e")
    gates[1].set()
    await b
    await settle_loop()
    assert sent == [[b"a"], [b"b"], [b"c", b"d"]]  # a message of two keys in flight: e waits
    gates[2].set()
    await c[0]
    await settle_loop()
    assert sent[-1] == [b"e"]
    gates[3].set()
    await e
    await rep.close()
    with pytest.raises(ValueError):
        Replicator(send, light_in_flight=0)


async def test_replicator_failure_fails_the_waiting_decisions_only() -> None:
    async def send(keys: Sequence[bytes], relays: list[bytes]) -> None:
        if b"boom" in keys:
            raise RuntimeError("replica gone")

    rep = Replicator(send)
    bad = rep.submit(b"boom")
    with pytest.raises(RuntimeError):
        await bad
    good = rep.submit(b"fine")
    await good
    with pytest.raises(ValueError):
        Replicator(send, max_in_flight=0)
