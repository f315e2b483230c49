"""The relay protocol: at replication 2 the key's other replica answers a forwarder that is
not a replica (1.5 round trips instead of 2), only after it stored the new state."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from peer_ring.core import PeerRingConfig
from peer_ring.core.testing import (
    FakeClock,
    FixedDiscovery,
    MemoryNetwork,
    free_port,
    settle_loop,
)
from peer_ring.ratelimit import (
    CorruptStateError,
    Decision,
    Limit,
    OwnerUnavailableError,
    RateLimiter,
    RateLimitError,
)
from peer_ring.ratelimit._relay import (
    RelayWaits,
    decode_deliveries,
    decode_relay_hits,
    decode_states_relay,
    encode_relay,
    encode_relay_hits,
    encode_states_relay,
)
from peer_ring.ratelimit._wire import encode_decision, pack_records

WINDOW = Limit(10, 60.0, algorithm="fixed_window")
PEERS = [f"127.0.0.{i}:7401" for i in range(1, 4)]
CONFIG = PeerRingConfig(
    partitions=64, request_timeout=1.0, down_after=3.0, suspicion_timeout=1.0, probe_interval=0.5
)
LATENCY = 0.01
T = TypeVar("T")


# -- wire and the forwarder's state machine ----------------------------------------------


def test_relay_messages_round_trip_and_refuse_bad_bytes() -> None:
    assert decode_relay_hits(encode_relay_hits(7, b"hits")) == (7, b"hits")
    relays = [encode_relay("127.0.0.3:1", 7, 0, b"d0"), encode_relay("127.0.0.4:1", 8, 5, b"d1")]
    states, per_fwd = decode_states_relay(encode_states_relay([b"s0", b"s1"], relays))
    assert states == [b"s0", b"s1"]
    assert sorted(per_fwd) == ["127.0.0.3:1", "127.0.0.4:1"]
    assert decode_deliveries(pack_records(per_fwd["127.0.0.4:1"])) == [(8, 5, b"d1")]
    for bad in (
        b"\x00",  # a batch id needs 8 bytes
        pack_records([b"only one part"]),
        pack_records([b"", pack_records([b"short"])]),
        pack_records([b"", pack_records([encode_relay("a" * 40, 1, 1, b"")[:20]])]),
    ):
        with pytest.raises(CorruptStateError):
            if len(bad) < 8:
                decode_relay_hits(bad)
            else:
                decode_states_relay(bad)
    with pytest.raises(CorruptStateError):
        decode_deliveries(pack_records([b"short"]))


async def test_relay_waits_take_a_decision_before_or_after_the_owners_answer() -> None:
    clock = FakeClock()
    loop = asyncio.get_running_loop()
    waits = RelayWaits()
    a, b = waits.open(), waits.open()
    assert a != b and len(waits) == 2
    yes = encode_decision(Decision(True, 10, 9, 1.0, 0.0))
    no = encode_decision(Decision(False, 10, 0, 1.0, 1.0))
    waits.deliver([(a, 1, yes)])  # the replica beat the owner's answer
    assert waits.arrived(a) == {1: yes}
    waits.expect(a, 2, clock, 1.0)  # the owner answered: hits 0 and 1 relayed
    early: asyncio.Future[Decision] = loop.create_future()
    waits.bind(a, 1, early)
    assert early.done() and early.result().allowed
    later: asyncio.Future[Decision] = loop.create_future()
    waits.bind(a, 0, later)
    assert not later.done()
    # Both hits resolved, the batch closes: the duplicate is dropped and counted.
    waits.deliver([(a, 0, no), (a, 0, yes)])
    assert not later.result().allowed
    assert len(waits) == 1
    assert waits.late == 1 and waits.received == 2
    waits.expect(b, 1, clock, 1.0)
    pending: asyncio.Future[Decision] = loop.create_future()
    waits.bind(b, 3, pending)
    idle = asyncio.ensure_future(waits.wait_idle())
    await asyncio.sleep(0)
    assert not idle.done()
    clock.advance(1.0)  # no relay within timeout: the hit fails, the batch closes
    assert isinstance(pending.exception(), OwnerUnavailableError)
    await idle
    assert len(waits) == 0
    waits.deliver([(b, 3, yes)])
    assert waits.late == 2


# -- in-memory clusters ---------------------------------------------------------------


class Trio:
    """Three limiters at replication 2 on one in-memory network with a fake clock."""

    def __init__(self, **kw: Any) -> None:
        self.clock = FakeClock()
        self.network = MemoryNetwork(self.clock)
        self.kw = kw
        self.nodes: dict[str, RateLimiter] = {}

    async def start(self) -> Trio:
        for a in PEERS:
            kw = dict(self.kw)
            relay = kw.pop("relay", True)
            if isinstance(relay, dict):  # per address
                relay = relay.get(a, True)
            rl = RateLimiter(
                FixedDiscovery(a, PEERS),
                replication=2,
                config=CONFIG,
                transport=self.network.transport(a),
                clock=self.clock,
                relay=relay,
                **kw,
            )
            await rl.start()
            self.nodes[a] = rl
        await asyncio.gather(*(rl.node.wait_ready() for rl in self.nodes.values()))
        await settle_loop(60)
        return self

    def roles(self, key: bytes) -> tuple[RateLimiter, RateLimiter, RateLimiter]:
        """``(forwarder, owner, replica)`` of ``key``: the forwarder is no replica."""
        owner, replica = next(iter(self.nodes.values())).node.preference_list(key, 2)
        (forwarder,) = set(self.nodes) - {owner, replica}
        return self.nodes[forwarder], self.nodes[owner], self.nodes[replica]

    @property
    def running(self) -> list[RateLimiter]:
        return [rl for rl in self.nodes.values() if rl.node.running]

    async def until(self, predicate: Callable[[], bool], within: float = 60.0) -> None:
        waited = 0.0
        while not predicate():
            assert waited < within, "condition not met in fake time"
            await self.clock.advance_async(0.1, settle=60)
            waited += 0.1
        await settle_loop(60)

    async def timed(self, rl: RateLimiter, key: bytes) -> tuple[bool, float]:
        """Hit ``key`` through ``rl`` with ``LATENCY`` per hop: (allowed, fake seconds)."""
        start = self.clock.monotonic()
        task = asyncio.ensure_future(rl.hit(key, WINDOW))
        while not task.done():
            await self.clock.advance_async(LATENCY / 10, settle=30)
        return task.result().allowed, self.clock.monotonic() - start

    async def drive(self, aw: Awaitable[T]) -> T:
        """Await ``aw`` while the fake clock moves on (work waiting for a paused peer or a
        message on its way ends only then)."""
        task = asyncio.ensure_future(aw)
        for _ in range(600):
            if task.done():
                break
            await self.clock.advance_async(0.01, settle=30)
        return await task

    async def stop(self) -> None:
        await self.drive(asyncio.gather(*(rl.stop() for rl in self.running)))


def count_requests(rl: RateLimiter) -> dict[str, int]:
    """Count the requests ``rl``'s node sends, by command (call, send, execute_many)."""
    counts: dict[str, int] = {}
    node = rl.node
    call, send, many = node.call, node.send, node.execute_many

    def count(command: Any) -> None:
        name = getattr(command, "name", str(command))
        counts[name] = counts.get(name, 0) + 1

    async def counted_call(address: str, ns: str, command: Any, *a: Any, **k: Any) -> bytes:
        count(command)
        return await call(address, ns, command, *a, **k)

    def counted_send(ns: str, command: Any, *a: Any, **k: Any) -> None:
        count(command)
        send(ns, command, *a, **k)

    async def counted_many(ns: str, command: Any, *a: Any, **k: Any) -> Any:
        count("execute_many")
        return await many(ns, command, *a, **k)

    node.call, node.send, node.execute_many = (  # type: ignore[method-assign]
        counted_call,
        counted_send,
        counted_many,
    )
    return counts


@pytest.mark.parametrize("relay", [True, False])
async def test_a_forwarded_hit_is_relayed_by_the_other_replica(relay: bool) -> None:
    c = await Trio(relay=relay).start()
    try:
        key = b"relay:1"
        fwd, owner, replica = c.roles(key)
        counts = {rl.node.address: count_requests(rl) for rl in (fwd, owner, replica)}
        d = await fwd.hit(key, WINDOW)
        await settle_loop(30)
        assert d.allowed and d.remaining == 9 and d.source == "owner"
        sent = [counts[rl.node.address] for rl in (fwd, owner, replica)]
        if relay:
            # forwarder -> owner, owner -> replica (state + decision), replica -> forwarder
            assert sent == [{"hits_relay": 1}, {"states_relay": 1}, {"relayed": 1}]
            assert owner.stats()["relayed"] == 1 and replica.stats()["relays_sent"] == 1
            assert fwd.stats()["relays_received"] == 1
        else:
            assert sent == [{"hits": 1}, {"states": 1}, {}]
            assert owner.stats()["relayed"] == 0
        # Both replicas hold the state the decision was taken on.
        for rl in (owner, replica):
            entry = rl.store.get(key)
            assert entry is not None and entry.seq == 1
    finally:
        await c.stop()


@pytest.mark.parametrize(("relay", "hops"), [(True, 3), (False, 4)])
async def test_a_relayed_hit_takes_three_hops_instead_of_four(relay: bool, hops: int) -> None:
    c = await Trio(relay=relay).start()
    try:
        key = b"relay:latency"
        fwd, _owner, replica = c.roles(key)
        c.network.latency = LATENCY
        allowed, took = await c.timed(fwd, key)
        assert allowed
        assert hops * LATENCY <= took < (hops + 0.5) * LATENCY
        # The forwarder is the other replica: one round trip either way (state with answer).
        allowed, took = await c.timed(replica, key)
        assert allowed and 2 * LATENCY <= took < 2.5 * LATENCY
    finally:
        await c.stop()


async def test_a_relayed_decision_waits_for_the_replica_to_store_the_state() -> None:
    """A paused replica: the owner decided and answered, but the forwarder releases nothing
    until the state is on the replica; it applies its fail policy after ``timeout``."""
    c = await Trio(fail_policy="fail-closed", timeout=1.0).start()
    try:
        key = b"relay:paused"
        fwd, owner, replica = c.roles(key)
        c.network.pause(replica.node.address)
        task = asyncio.ensure_future(fwd.hit(key, WINDOW))
        await c.clock.advance_async(0.5, settle=60)
        assert not task.done()  # the owner's answer came: it said "relayed"
        entry = owner.store.get(key)
        assert entry is not None and entry.seq == 1 and replica.store.get(key) is None
        await c.clock.advance_async(1.0, settle=60)
        assert task.done() and task.result().source == "fail-closed"
        assert fwd.stats()["owner_unavailable"] == 1
    finally:
        c.network.resume(replica.node.address)
        await c.stop()


async def test_an_unreachable_replica_makes_the_owner_answer_after_its_fallback() -> None:
    """The link owner-replica is cut: the owner's states message fails at once, the state
    goes through the core's sloppy quorum (hinted handoff) and the owner sends the decision
    itself."""
    c = await Trio().start()
    try:
        key = b"relay:cut"
        fwd, owner, replica = c.roles(key)
        c.network.cut(owner.node.address, replica.node.address)
        d = await fwd.hit(key, WINDOW)
        assert d.allowed and d.source == "owner"
        assert owner.stats()["relays_sent"] == 1  # the owner delivered it
        # The state reached its quorum through the core's sloppy quorum (a hint held by
        # the third node), which hands it to the replica once the link is back.
        assert owner.stats()["replication_failures"] == 0
        c.network.heal()
        await c.until(lambda: replica.store.get(key) is not None, within=30)
        entry = replica.store.get(key)
        assert entry is not None and entry.seq == 1
    finally:
        c.network.heal()
        await c.stop()


async def test_a_lost_owner_answer_still_gets_the_relayed_decision() -> None:
    """The owner's answer never reaches the forwarder (link cut after the request left), the
    replica's relay does: the decision is released (its state is on both replicas)."""
    c = await Trio(timeout=1.0).start()
    try:
        key = b"relay:lost-answer"
        fwd, owner, _replica = c.roles(key)
        c.network.latency = LATENCY
        task = asyncio.ensure_future(fwd.hit(key, WINDOW))
        await c.clock.advance_async(LATENCY * 1.5, settle=30)  # the request arrived
        c.network.cut(owner.node.address, fwd.node.address)
        while not task.done():
            await c.clock.advance_async(0.05, settle=30)
        d = task.result()
        assert d.allowed and d.source == "owner" and d.remaining == 9
    finally:
        c.network.heal()
        await c.stop()


async def kill_9(c: Trio, rl: RateLimiter) -> None:
    addr = rl.node.address
    c.network.pause(addr)
    await c.drive(rl.stop())
    await c.until(lambda: all(addr not in n.node.ring.members for n in c.running))
    await c.until(lambda: all(n.node.ready for n in c.running))


@pytest.mark.parametrize("victim", ["owner", "replica"])
async def test_kill_9_mid_flight_admits_at_most_the_limit(victim: str) -> None:
    """Relayed hits in flight when the owner (or the replica) dies: every decision the
    forwarder released has its state on a survivor, so the key never admits more than 10."""
    c = await Trio(fail_policy="fail-closed").start()
    try:
        key = b"relay:kill"
        fwd, owner, replica = c.roles(key)
        first = await asyncio.gather(*(fwd.hit(key, WINDOW) for _ in range(4)))
        assert sum(d.allowed for d in first) == 4 and owner.stats()["relayed"] >= 1
        c.network.latency = LATENCY
        tasks = [asyncio.ensure_future(fwd.hit(key, WINDOW)) for _ in range(4)]
        await c.clock.advance_async(LATENCY * 1.5, settle=30)  # the owner decided them
        await kill_9(c, owner if victim == "owner" else replica)
        c.network.latency = 0.0
        mid = [t.result() for t in tasks]
        survivors = c.running
        rest = await asyncio.gather(*(survivors[i % 2].hit(key, WINDOW) for i in range(40)))
        admitted = sum(d.allowed for d in first + mid + rest)
        owner_admitted = sum(d.allowed and d.source == "owner" for d in first + mid + rest)
        assert owner_admitted == admitted  # fail_closed: nothing admitted by a fallback
        assert (admitted, sum(d.allowed for d in mid)) == (10, 4), [d.source for d in mid]
    finally:
        await c.stop()


async def roles_of(key: bytes) -> list[str]:
    """``[forwarder, owner, replica]`` addresses of ``key`` (the ring depends only on the
    addresses: a throwaway cluster finds them)."""
    c = await Trio().start()
    try:
        return [rl.node.address for rl in c.roles(key)]
    finally:
        await c.stop()


async def test_an_owner_of_the_old_protocol_gets_hits() -> None:
    """The owner and the replica run without relay (as nodes of the old protocol): the
    forwarder's ``hits_relay`` gets UnknownCommandError, the same batch goes again as
    ``hits``, and the owner is sent ``hits`` from then on."""
    key = b"relay:old-owner"
    _fwd, owner_addr, replica_addr = await roles_of(key)
    c = await Trio(relay={owner_addr: False, replica_addr: False}).start()
    try:
        fwd, owner, replica = c.roles(key)
        counts = count_requests(fwd)
        assert [d.allowed for d in [await fwd.hit(key, WINDOW) for _ in range(2)]] == [True] * 2
        assert counts == {"hits_relay": 1, "hits": 2}
        assert owner.stats()["relayed"] == 0 and replica.store.get(key) is not None
    finally:
        await c.stop()


async def test_a_replica_of_the_old_protocol_gets_states_and_the_owner_answers() -> None:
    """Only the replica runs without relay: the owner's ``states_relay`` gets
    UnknownCommandError, the states go through the fallback and the owner sends the relayed
    decision itself; later hits are not relayed to that replica."""
    key = b"relay:old-replica"
    replica_addr = (await roles_of(key))[2]
    c = await Trio(relay={replica_addr: False}).start()
    try:
        fwd, owner, replica = c.roles(key)
        counts = count_requests(owner)
        first = await fwd.hit(key, WINDOW)
        assert first.allowed and first.source == "owner"
        assert owner.stats()["relays_sent"] == 1
        entry = replica.store.get(key)
        assert entry is not None and entry.seq == 1
        second = await fwd.hit(key, WINDOW)
        assert second.allowed and second.remaining == 8
        assert counts == {"states_relay": 1, "execute_many": 1, "relayed": 1, "states": 1}
    finally:
        await c.stop()


@pytest.mark.parametrize("cluster", [{"nodes": 5, "relay_max_batch": None}], indirect=True)
async def test_10k_concurrent_hits_from_5_nodes_admit_exactly_the_limit_through_relays(
    cluster: list[RateLimiter],
) -> None:
    """Hits of one key from every node at once: relayed, answered with the state and
    owner-local decisions interleave on the owner; the count stays exact. (A limit of
    3,000: with 100, the owner's own 2,000 hits, decided before any forwarded batch
    arrives, would take the whole allowance and no admitted hit would be relayed.)"""
    rng = random.Random(11)
    limit = Limit(3000, 60.0, algorithm="fixed_window")
    out = await asyncio.gather(
        *(rng.choice(cluster).hit("api:relay", limit) for _ in range(10_000))
    )
    assert sum(d.allowed for d in out) == 3000
    assert all(d.source == "owner" for d in out)
    stats = [rl.stats() for rl in cluster]
    relayed = sum(s["relayed"] for s in stats)
    assert relayed > 0 and sum(s["relays_received"] for s in stats) == relayed
    assert sum(s["relays_late"] for s in stats) == 0


HOSTS = tuple(f"127.0.0.{i}" for i in range(1, 4))
BOUND = 60.0  # real seconds; only reached on a bug


@pytest.mark.parametrize("transport", ["tcp", "grpc"])
async def test_relayed_decisions_over_real_transports_stay_exact(transport: str) -> None:
    """Three in-process nodes on loopback, each hitting 30 keys with a limit of 20: every key
    admits exactly 20, and the forwarders not a replica got their decisions relayed."""
    port = free_port(*HOSTS)
    peers = [f"{h}:{port}" for h in HOSTS]
    config = PeerRingConfig(
        partitions=32, request_timeout=30.0, down_after=None, transport=transport
    )
    limiters = [
        RateLimiter(
            FixedDiscovery(a, peers),
            replication=2,
            config=config,
            timeout=30.0,
            fail_policy="fail-closed",
            relay_max_batch=None,  # every batch relayed, however large
        )
        for a in peers
    ]
    try:
        for rl in limiters:
            await rl.start()
        await asyncio.wait_for(asyncio.gather(*(rl.node.wait_ready() for rl in limiters)), BOUND)
        limit = Limit(20, 60.0, algorithm="fixed_window")
        keys = [f"relay:tcp:{i}" for i in range(30)]
        rng = random.Random(5)
        hits = [(rng.choice(limiters), k) for k in keys for _ in range(50)]
        rng.shuffle(hits)
        out = await asyncio.wait_for(asyncio.gather(*(rl.hit(k, limit) for rl, k in hits)), BOUND)
        assert {d.source for d in out} == {"owner"}
        admitted: dict[str, int] = {}
        for (_, k), d in zip(hits, out, strict=True):
            admitted[k] = admitted.get(k, 0) + d.allowed
        assert admitted == dict.fromkeys(keys, 20)
        stats = [rl.stats() for rl in limiters]
        relayed = sum(s["relayed"] for s in stats)
        assert relayed > 0 and sum(s["relays_received"] for s in stats) == relayed
        # Every admitted hit's state is on both replicas of its key.
        for k in keys:
            kb = k.encode()
            replicas = limiters[0].node.preference_list(kb, 2)
            for rl in limiters:
                if rl.node.address in replicas:
                    entry = rl.store.get(kb)
                    assert entry is not None and entry.seq >= 20
    finally:
        for rl in limiters:
            await rl.stop()


async def test_batches_above_relay_max_batch_are_answered_by_the_owner() -> None:
    """At a heavy load (batches of more than ``relay_max_batch`` hits) the owner answers the
    whole batch itself, after replicating, as without relay; small batches are relayed."""
    c = await Trio(relay_max_batch=2).start()
    try:
        fwd, owner, replica = c.roles(b"relay:0")
        ring = owner.node
        keys = [
            k
            for k in (f"relay:{i}".encode() for i in range(2000))
            if list(ring.preference_list(k, 2)) == [owner.node.address, replica.node.address]
        ][:7]
        assert len(keys) == 7
        big = await asyncio.gather(*(fwd.hit(k, WINDOW) for k in keys[:5]))
        assert all(d.allowed for d in big) and owner.stats()["relayed"] == 0
        small = await asyncio.gather(*(fwd.hit(k, WINDOW) for k in keys[5:]))
        assert all(d.allowed for d in small) and owner.stats()["relayed"] == 2
        for k in keys:  # both replicas hold every state either way
            assert all(rl.store.get(k) is not None for rl in (owner, replica))
        with pytest.raises(RateLimitError):
            RateLimiter(FixedDiscovery(PEERS[0], PEERS), relay_max_batch=-1)
    finally:
        await c.stop()
