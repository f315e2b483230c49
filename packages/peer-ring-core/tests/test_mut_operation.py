"""An operation's replies through the owner protocol the TCP transport uses, and local
coroutine handlers (tools/mutation on ``_operation.py``: no memory-network test reached
``answered`` / ``on_response``, as the memory transport resolves a future instead).

``DirectMemoryTransport`` is the memory transport with the TCP transport's ``submit``
contract (``Transport.submit``): a success reaches ``owner.answered``, an error status
``owner.on_response``, a failure or cancellation ``owner.on_done``. Fake time, observable
behaviour only: the result's replies, errors and quorum outcome, what each handler ran.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from peer_ring.core import (
    Command,
    CommandContext,
    InvalidArgumentError,
    PeerRing,
    PeerRingConfig,
    QuorumNotReachedError,
    RequestTimeoutError,
)
from peer_ring.core._types import Request, Status
from peer_ring.core.testing import (
    FakeClock,
    FixedDiscovery,
    MemoryNetwork,
    MemoryTransport,
    settle_loop,
)
from peer_ring.core.transport import TransportLimits
from peer_ring.core.transport._base import CallOwner

pytestmark = pytest.mark.fake_time

ADDRS = ["10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"]
SET = Command("set", mutates=True)
GET = Command("get", reads=True)
HIT = Command("hit", mutates=True, hinted=False)
CONFIG = PeerRingConfig(
    partitions=8,
    replication=3,
    quorum=2,
    request_timeout=1.0,
    anti_entropy_interval=None,
    down_after=None,
)


class DirectMemoryTransport(MemoryTransport):
    """Answers reach the owner as over TCP: ``answered`` / ``on_response`` / ``on_done``."""

    submitted = 0

    def submit(
        self,
        peer: str,
        owner: CallOwner,
        hint: str,
        namespace: str,
        command: str,
        key: bytes,
        payload: bytes,
        partition: int,
        timeout: float,
    ) -> None:
        DirectMemoryTransport.submitted += 1
        fut = self.request(
            peer, Request(namespace, command, key, payload, partition, hint, timeout)
        )

        def done(f: asyncio.Future[object]) -> None:
            if f.cancelled() or f.exception() is not None:
                owner.on_done(peer, hint, f)  # type: ignore[arg-type]
                return
            response = f.result()
            if response.status == Status.OK:  # type: ignore[attr-defined]
                owner.answered(peer, hint, response.payload)  # type: ignore[attr-defined]
            else:
                owner.on_response(peer, hint, response)  # type: ignore[arg-type]

        fut.add_done_callback(done)  # type: ignore[arg-type]


class Handlers:
    """Per node: what ran (with its context's partition and hint), which nodes refuse (an
    error status) and which are slow (until ``release``), at what fake time each ran."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.ran: list[tuple[str, bytes]] = []
        self.contexts: list[tuple[str, int, str]] = []
        self.times: dict[str, float] = {}
        self.refuse: set[str] = set()
        self.slow: set[str] = set()
        self.release = asyncio.Event()

    def handler(self, address: str):  # type: ignore[no-untyped-def]
        async def run(ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
            self.ran.append((address, payload))
            self.contexts.append((address, ctx.partition, ctx.hint))
            self.times[address] = self.clock.monotonic()
            if address in self.slow:
                await self.release.wait()
            if address in self.refuse:
                raise InvalidArgumentError(f"{address} refuses")
            return b"ok from " + address.encode()

        return run


async def cluster(
    clock: FakeClock, handlers: Handlers, addresses: list[str] = ADDRS, **overrides: object
) -> list[PeerRing]:
    net = MemoryNetwork(clock)
    nodes = []
    config = dataclasses.replace(CONFIG, **overrides)  # type: ignore[arg-type]
    for address in addresses:
        node = PeerRing(
            FixedDiscovery(address, addresses),
            config=config,
            transport=DirectMemoryTransport(net, address, TransportLimits()),
            clock=clock,
        )
        node.register("t", SET, handlers.handler(address))
        node.register("t", HIT, handlers.handler(address))
        node.register("t", GET, handlers.handler(address))
        await node.start()
        nodes.append(node)
    for node in nodes:
        await node.wait_ready(5.0)
    return nodes


def key_headed_by(node: PeerRing, n: int) -> bytes:
    for i in range(10_000):
        key = f"key:{i}".encode()
        if node.preference_list(key, n)[0] == node.address:
            return key
    raise AssertionError("no key headed by the node")


async def test_answers_through_the_owner_protocol_reach_the_quorum_and_complete(
    loop_clock: FakeClock,
) -> None:
    handlers = Handlers(loop_clock)
    nodes = await cluster(loop_clock, handlers)
    try:
        before = DirectMemoryTransport.submitted
        result = await nodes[0].execute("t", SET, b"k", b"v")
        assert result.ok and result.error is None
        replies = await result.all_replies()
        assert sorted(r.node for r in replies) == sorted(ADDRS)
        assert all(r.error is None for r in replies)
        assert {r.node: r.payload for r in replies} == {a: b"ok from " + a.encode() for a in ADDRS}
        assert result.complete
        assert DirectMemoryTransport.submitted - before == 2  # the two remote replicas
        assert sorted(handlers.ran) == sorted((a, b"v") for a in ADDRS)
        partition = nodes[0].partition_for_key(b"k")
        assert sorted(handlers.contexts) == [(a, partition, "") for a in ADDRS]
    finally:
        for node in nodes:
            await node.stop()


async def test_an_error_status_is_a_failed_reply_and_can_fail_the_quorum(
    loop_clock: FakeClock,
) -> None:
    handlers = Handlers(loop_clock)
    nodes = await cluster(loop_clock, handlers)
    try:
        handlers.refuse = {ADDRS[1], ADDRS[2]}
        with pytest.raises(QuorumNotReachedError) as info:
            await nodes[0].execute("t", HIT, b"k", b"v")
        assert info.value.succeeded == [ADDRS[0]]
        assert sorted(info.value.failures) == [ADDRS[1], ADDRS[2]]
        for address in ADDRS[1:]:
            error = info.value.failures[address]
            assert isinstance(error, InvalidArgumentError)
            assert f"{address} refuses" in str(error)
        # Not a reason to look elsewhere: the replicas answered, no one else was asked.
        assert sorted(a for a, _ in handlers.ran) == sorted(ADDRS)

        # A refusal first, then the last success: the result is complete with it.
        handlers.refuse = {ADDRS[2]}
        handlers.slow = {ADDRS[1]}
        result = await nodes[0].execute("t", HIT, b"k2", b"w", quorum=1)
        assert result.ok
        await settle_loop()
        assert [r.node for r in result.replies] == [ADDRS[0], ADDRS[2]]
        assert not result.complete
        handlers.release.set()
        await settle_loop()
        assert result.complete
        replies = {r.node: r for r in result.replies}
        assert replies[ADDRS[1]].error is None
        assert replies[ADDRS[1]].payload == b"ok from " + ADDRS[1].encode()
        assert isinstance(replies[ADDRS[2]].error, InvalidArgumentError)
        assert replies[ADDRS[2]].payload == b""
    finally:
        for node in nodes:
            await node.stop()


async def test_a_coroutine_handler_on_this_node_is_counted_when_it_finishes(
    loop_clock: FakeClock,
) -> None:
    net = MemoryNetwork(loop_clock)
    release = asyncio.Event()
    calls: list[bytes] = []

    async def slow(ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        calls.append(payload)
        await release.wait()
        if payload == b"bad":
            raise InvalidArgumentError("bad payload")
        return b"done"

    node = PeerRing(
        FixedDiscovery(ADDRS[0], [ADDRS[0]]),
        config=CONFIG,
        transport=DirectMemoryTransport(net, ADDRS[0], TransportLimits()),
        clock=loop_clock,
    )
    node.register("t", SET, slow)
    await node.start()
    try:
        task = asyncio.ensure_future(node.execute("t", SET, b"k", b"v", replication=1, quorum=1))
        await settle_loop()
        assert calls == [b"v"] and not task.done()
        release.set()
        result = await task
        assert [(r.node, r.payload, r.error) for r in result.replies] == [(ADDRS[0], b"done", None)]
        with pytest.raises(QuorumNotReachedError) as info:
            await node.execute("t", SET, b"k", b"bad", replication=1, quorum=1)
        error = info.value.failures[ADDRS[0]]
        assert isinstance(error, InvalidArgumentError) and "bad payload" in str(error)
    finally:
        await node.stop()


async def test_a_local_coroutine_past_the_timeout_fails_as_a_timeout_of_this_node(
    loop_clock: FakeClock,
) -> None:
    net = MemoryNetwork(loop_clock)
    started = asyncio.Event()

    async def hang(ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        started.set()
        await asyncio.Event().wait()
        return b""

    node = PeerRing(
        FixedDiscovery(ADDRS[0], [ADDRS[0]]),
        config=CONFIG,
        transport=DirectMemoryTransport(net, ADDRS[0], TransportLimits()),
        clock=loop_clock,
    )
    node.register("t", SET, hang)
    await node.start()
    try:
        with pytest.raises(QuorumNotReachedError) as info:
            await node.execute("t", SET, b"k", b"v", replication=1, quorum=1, timeout=0.5)
        assert started.is_set()
        assert info.value.succeeded == []
        error = info.value.failures[ADDRS[0]]
        assert isinstance(error, RequestTimeoutError)
        assert f"handler on {ADDRS[0]} timed out after 0.5s" in str(error)
    finally:
        await node.stop()


async def test_a_quorum_read_asks_this_node_and_the_next_replica_with_the_key_s_partition(
    loop_clock: FakeClock,
) -> None:
    handlers = Handlers(loop_clock)
    nodes = await cluster(loop_clock, handlers)
    try:
        key = key_headed_by(nodes[0], 3)
        prefs = nodes[0].preference_list(key, 3)
        result = await nodes[0].execute("t", GET, key, b"r")
        assert result.ok
        assert sorted(r.node for r in await result.all_replies()) == sorted(prefs[:2])
        partition = nodes[0].partition_for_key(key)
        assert sorted(handlers.contexts) == sorted((a, partition, "") for a in prefs[:2])
        assert nodes[0].sync_status()["reads"] == {"speculative": 0, "retried": 0}
    finally:
        for node in nodes:
            await node.stop()


async def test_speculative_reads_ask_one_spare_per_delay_until_the_quorum_is_reached(
    loop_clock: FakeClock,
) -> None:
    handlers = Handlers(loop_clock)
    addresses = [f"10.0.0.{i}:7000" for i in range(1, 5)]
    nodes = await cluster(loop_clock, handlers, addresses, replication=4, read_speculate_after=0.25)
    try:
        key = key_headed_by(nodes[0], 4)
        prefs = nodes[0].preference_list(key, 4)
        handlers.slow = {prefs[1], prefs[2]}  # the asked replica and the first spare
        started = loop_clock.monotonic()
        result = await nodes[0].execute("t", GET, key, b"r", timeout=5.0)
        assert result.ok
        assert sorted(r.node for r in result.ok_replies) == sorted([prefs[0], prefs[3]])
        # One spare per read_speculate_after (rounded up to the wheel's 5 ms tick), in
        # preference order, never early.
        asked = {a: handlers.times[a] - started for a in prefs}
        assert asked[prefs[0]] == asked[prefs[1]] == 0.0
        assert 0.25 <= asked[prefs[2]] <= 0.25 + 0.01
        assert 0.5 <= asked[prefs[3]] <= 0.5 + 0.02
        assert nodes[0].sync_status()["reads"] == {"speculative": 2, "retried": 0}
        handlers.release.set()
        replies = await result.all_replies()
        assert sorted(r.node for r in replies) == sorted(prefs)
        assert all(r.error is None for r in replies)
    finally:
        handlers.release.set()
        for node in nodes:
            await node.stop()
