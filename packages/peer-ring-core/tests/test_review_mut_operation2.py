"""Review, second pass: survivors of tools/mutation on ``core/_operation.py``, killed here.

What an operation does when a replica cannot serve a read, pinned through public outcomes
(replies, their errors, which handler ran with which hint):

- a read refused by a replica still pulling the partition goes to a *previous holder*: a
  node the coordinator's own pull names (``read_fallbacks``), then the previous ring's
  replicas; never a node asked already, nor one suspected or marked down, and a previous
  holder is asked once; the forwarded request carries the refusing replica as its hint,
  also when a previous holder refuses in turn (``_previous_holder``, ``on_response``);
- a quorum read whose coordinator is itself still pulling the partition asks it only when
  the other replicas are short, without a hint, and lets its pull finish first
  (``_start_read``, ``expire``).

Fake time on a memory network whose transport answers through the owner protocol and
carries each request through the TCP encoding (as ``test_review_mut_operation.py``).
Ring views are changed per node through each node's own discovery, as a discovery that
has not reached every node yet does.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import pytest

from peer_ring.core import (
    Command,
    CommandContext,
    InvalidArgumentError,
    PeerRing,
    PeerRingConfig,
    PeerUnavailableError,
    QuorumNotReachedError,
    RequestTimeoutError,
)
from peer_ring.core._batch import BATCH, decode_items, item_size
from peer_ring.core._ring import Ring
from peer_ring.core._types import Request, Response, Status
from peer_ring.core.proto import peer_ring_pb2 as pb
from peer_ring.core.testing import FakeClock, FixedDiscovery, MemoryNetwork, MemoryTransport
from peer_ring.core.transport import TransportLimits
from peer_ring.core.transport._base import CallOwner
from peer_ring.core.transport._codec import request_fields_part, request_from_pb, request_part

pytestmark = pytest.mark.fake_time

GET = Command("get", reads=True)
SET = Command("set", mutates=True)
HIT = Command("hit", mutates=True, hinted=False)
#: No periodic probes, anti-entropy or down marking: suspicion changes only as a test says.
CONFIG = PeerRingConfig(
    partitions=8,
    replication=3,
    quorum=2,
    request_timeout=1.0,
    anti_entropy_interval=None,
    down_after=None,
    probe_interval=1000.0,
    suspicion_timeout=1000.0,
)
#: Upper bound of one wait, fake seconds (only reached on a bug).
LIMIT = 30.0


def _route(owner: CallOwner, peer: str, hint: str, fut: asyncio.Future[Response]) -> None:
    if fut.cancelled() or fut.exception() is not None:
        owner.on_done(peer, hint, fut)
    elif fut.result().status == Status.OK:
        owner.answered(peer, hint, fut.result().payload)
    else:
        owner.on_response(peer, hint, fut.result())


class OwnerTransport(MemoryTransport):
    """The memory transport with the TCP transport's answer path (``Transport.submit``:
    a success reaches ``owner.answered``, an error status ``owner.on_response``) and its
    encoding of each request's fields."""

    def submit(self, peer: str, owner: CallOwner, hint: str, *fields: Any) -> None:
        namespace, command, key, payload, partition, timeout = fields
        part = request_fields_part(1, namespace, command, key, payload, partition, hint, timeout)
        (wire,) = pb.Frame.FromString(part).requests
        super().request(peer, request_from_pb(wire)).add_done_callback(
            partial(_route, owner, peer, hint)
        )

    def request(self, peer: str, request: Request) -> asyncio.Future[Response]:
        (wire,) = pb.Frame.FromString(request_part(1, request, request.timeout)).requests
        return super().request(peer, request_from_pb(wire))


class Runs:
    """What each node's handler (of every command) saw (address, hint) and how it answers: a node in
    ``unavailable`` refuses as a node that cannot serve now (``PeerUnavailableError``:
    status UNAVAILABLE) that many times, one in ``refuse`` with an error status, one in
    ``slow`` waits for ``release``; ``on_run`` is called with each run's address. A node in
    ``inline`` answers from a plain function (no Task), the others from a coroutine."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.unavailable: dict[str, int] = {}
        self.refuse: set[str] = set()
        self.slow: set[str] = set()
        self.release = asyncio.Event()
        self.on_run: Callable[[str], None] = lambda address: None
        self.inline: set[str] = set()

    def handler(self, address: str) -> Callable[..., Any]:
        """The handler of ``address``: a coroutine function, or for a node in ``inline``
        a plain function that answers (or raises) at once."""

        def run(ctx: CommandContext, key: bytes, payload: bytes) -> Any:
            self.seen.append((address, ctx.hint))
            self.on_run(address)
            if address in self.inline:
                return self._answer(address)
            return self._later(address)

        return run

    def _answer(self, address: str) -> bytes:
        if self.unavailable.get(address, 0) > 0:
            self.unavailable[address] -= 1
            raise PeerUnavailableError(address, "cannot serve now")
        if address in self.refuse:
            raise InvalidArgumentError(f"{address} refuses")
        return b"ok from " + address.encode()

    async def _later(self, address: str) -> bytes:
        if address in self.slow:
            await self.release.wait()
        return self._answer(address)

    def ran(self, address: str) -> list[str]:
        """The hints of the runs on ``address``."""
        return [hint for a, hint in self.seen if a == address]


@dataclasses.dataclass
class Cluster:
    nodes: list[PeerRing]
    discoveries: dict[str, FixedDiscovery]
    #: Set it to let the pulls of the nodes started with ``held`` go on.
    gate: asyncio.Event
    network: MemoryNetwork

    def node(self, address: str) -> PeerRing:
        return next(n for n in self.nodes if n.address == address)


Make = Callable[..., Any]


@pytest.fixture
async def cluster(loop_clock: FakeClock) -> AsyncIterator[Make]:
    """``await cluster(count, runs, held=(), views=None, **config)``: ``count`` started
    nodes on one memory network; a node whose index is in ``held`` pulls nothing until
    ``gate`` is set (it stays pending), the others are ready. ``views`` maps an index to
    the indices its discovery lists at first (default: every node). ``plain``: the
    memory transport itself (every outcome through ``owner.on_done``, as a transport
    without the direct answer path). Stopped after."""
    made: list[PeerRing] = []

    async def make(
        count: int,
        runs: Runs,
        held: tuple[int, ...] = (),
        views: dict[int, list[int]] | None = None,
        plain: bool = False,
        **overrides: Any,
    ) -> Cluster:
        network = MemoryNetwork(loop_clock)
        addresses = [f"10.0.0.{i}:7000" for i in range(1, count + 1)]
        config = dataclasses.replace(CONFIG, **overrides)
        gate = asyncio.Event()
        nodes = []
        discoveries = {}
        for i, address in enumerate(addresses):
            view = (views or {}).get(i, range(count))
            discoveries[address] = FixedDiscovery(address, [addresses[j] for j in view])
            node = PeerRing(
                discoveries[address],
                config=config,
                transport=(
                    network.transport(address)
                    if plain
                    else OwnerTransport(network, address, TransportLimits())
                ),
                clock=loop_clock,
            )
            for command in (GET, SET, HIT):
                node.register("t", command, runs.handler(address))
            if i in held:
                hold_pulls(node, gate)
            made.append(node)
            await node.start()
            nodes.append(node)
        for i, node in enumerate(nodes):
            if i not in held:
                await node.wait_ready(5.0)
        return Cluster(nodes, discoveries, gate, network)

    yield make
    for node in made:
        await node.stop()


def hold_pulls(node: PeerRing, gate: asyncio.Event) -> None:
    """``node``'s pull rounds wait for ``gate``: its gained partitions stay pending."""
    sync: Any = node._sync
    original = sync._pull_round

    async def gated(partitions: list[int]) -> None:
        await gate.wait()
        await original(partitions)

    sync._pull_round = gated


async def read(node: PeerRing, key: bytes, quorum: int) -> Any:
    return await asyncio.wait_for(node.execute("t", GET, key, b"", quorum=quorum), LIMIT)


async def until(predicate: Callable[[], bool]) -> None:
    """Let the loop run (fake time) until ``predicate`` holds."""
    for _ in range(10_000):
        if predicate():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition not reached")


def pending(node: PeerRing, key: bytes) -> bool:
    return not node.partition_ready(node.partition_for_key(key))


# -- previous holders -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Roles:
    """A key and five nodes' parts in two ring changes seen by the coordinator only."""

    key: bytes
    #: The coordinator: not a replica of the key at first, one after ``v`` is dropped.
    a: str
    #: Replicas at first, in preference order ``[y, x, v]`` or ``[x, y, v]``.
    y: str
    x: str
    v: str
    #: The fifth node: a replica once ``v`` and ``x`` are out of the ring.
    z: str


def find_roles(addresses: list[str], partitions: int) -> Roles:
    everyone = set(addresses)
    for i in range(10_000):
        key = f"key:{i}".encode()
        ring0 = Ring(everyone, partitions)
        p = ring0.partition_for_key(key)
        first = ring0.preference_list(p, 3)
        for v, x in ((first[2], first[0]), (first[2], first[1])):
            (y,) = set(first) - {v, x}
            after_v = Ring(everyone - {v}, partitions).preference_list(p, 3)
            (a,) = set(after_v) - set(first)
            after_x = Ring(everyone - {v, x}, partitions).preference_list(p, 3)
            # A not last in its final preference list: a quorum read of 2 with the two
            # others suspected asks A itself.
            if set(after_v) == {y, x, a} and {y, a} <= set(after_x) and after_x[2] != a:
                (z,) = set(after_x) - {y, a}
                return Roles(key, a, y, x, v, z)
    raise AssertionError("no key fits")


async def two_ring_changes(
    cluster: Make, runs: Runs, second: str, **config: Any
) -> tuple[PeerRing, Roles, asyncio.Event]:
    """5 nodes, R3 (see :class:`Roles`). The coordinator A's view changes twice (the
    others' do not):

    1. its discovery drops ``v``: A gains the key's partition and pulls it (held, so it
       stays pending) from its previous holders ``y``, ``x``, ``v``;
    2. ``second``: ``"down"`` marks ``x`` down, ``"drop"`` drops ``x`` from its discovery
       too. Either way A's replicas of the key are then ``y``, A, ``z`` (A not last), and
       its previous ring's ``y``, ``x``, A.

    Returns A, the roles, and the gate that lets A's pulls go on.
    """
    c = await cluster(5, runs, **config)
    everyone = [n.address for n in c.nodes]
    roles = find_roles(everyone, CONFIG.partitions)
    a = c.node(roles.a)
    hold_pulls(a, c.gate)
    c.discoveries[a.address].set_members([m for m in everyone if m != roles.v])
    await until(lambda: len(a.ring) == 4)
    assert set(a.preference_list(roles.key, 3)) == {roles.y, roles.x, roles.a}
    assert pending(a, roles.key)
    if second == "down":
        assert a._membership.mark_down(roles.x)
    else:
        c.discoveries[a.address].set_members([m for m in everyone if m not in (roles.v, roles.x)])
    await until(lambda: len(a.ring) == 3)
    assert set(a.preference_list(roles.key, 3)) == {roles.y, roles.a, roles.z}
    assert pending(a, roles.key)
    return a, roles, c.gate


async def test_a_read_refused_by_a_pulling_coordinator_goes_to_the_holder_its_pull_names(
    cluster: Make,
) -> None:
    """The coordinator A still pulls the key's partition: its own run refuses, and the
    read goes to the first previous holder that was not asked and is not down: of A's
    pull's holders y, x, v (then its previous ring's y, x, A), y was asked and x is down,
    so v (named by the pull alone) answers for A, with A as the hint."""
    runs = Runs()
    a, r, _ = await two_ring_changes(cluster, runs, "down")
    result = await read(a, r.key, quorum=3)
    replies = await asyncio.wait_for(result.all_replies(), LIMIT)
    assert sorted(reply.node for reply in replies) == sorted([r.y, r.z, r.v])
    assert all(reply.error is None for reply in replies), replies
    assert runs.ran(r.v) == [r.a]
    assert runs.ran(r.y) == [""] and runs.ran(r.z) == [""]
    assert runs.ran(r.x) == [] and runs.ran(r.a) == []


async def test_a_previous_holder_that_refuses_too_is_not_asked_again(cluster: Make) -> None:
    """As above, v refuses (UNAVAILABLE) once: no other holder is left (v was asked
    already), so its refusal is the failure counted in A's place."""
    runs = Runs()
    a, r, _ = await two_ring_changes(cluster, runs, "down")
    runs.unavailable[r.v] = 1
    with pytest.raises(QuorumNotReachedError) as info:
        await read(a, r.key, quorum=3)
    assert str(info.value).startswith("t/get: quorum of 3 not reached (2 succeeded)")
    assert sorted(info.value.failures) == [r.v]
    error = info.value.failures[r.v]
    assert isinstance(error, PeerUnavailableError)
    assert error.peer == r.v  # names the holder that refused
    assert runs.ran(r.v) == [r.a]


@pytest.mark.parametrize("plain", [False, True], ids=["owner-protocol", "plain-transport"])
async def test_a_second_previous_holder_gets_the_first_refusal_s_hint(
    cluster: Make, plain: bool
) -> None:
    """x and v are both previous holders (A's discovery dropped both): x, first in the
    pull's order, refuses (UNAVAILABLE), then v is asked, for A still (the hint names the
    replica the read was for, not the holder that refused). The refusal reaches the
    operation through ``on_response`` (owner protocol) or ``on_done`` (plain)."""
    runs = Runs()
    a, r, _ = await two_ring_changes(cluster, runs, "drop", plain=plain)
    runs.unavailable[r.x] = 1
    result = await read(a, r.key, quorum=3)
    assert sorted(reply.node for reply in result.ok_replies) == sorted([r.y, r.z, r.v])
    assert runs.ran(r.x) == [r.a]
    assert runs.ran(r.v) == [r.a]


async def newcomer_pushes_out(cluster: Make, runs: Runs) -> tuple[PeerRing, str, str, bytes]:
    """5 nodes, R3; the newcomer N is in no one's view but its own until the coordinator
    A's discovery lists it. Then N is a replica of the key in A's view and O, a replica
    of A's previous ring, is not (O's own view, as every node's but N's and A's, still
    lacks N). N cannot serve the key yet: its handler refuses once with UNAVAILABLE.
    Returns A, N, O and the key."""
    addresses = [f"10.0.0.{i}:7000" for i in range(1, 6)]
    key, n, o, coordinator = find_newcomer(addresses)
    others = [j for j, address in enumerate(addresses) if address != n]
    c = await cluster(5, runs, views=dict.fromkeys(others, others))
    a = c.node(coordinator)
    c.discoveries[a.address].set_members(addresses)
    await until(lambda: len(a.ring) == 5)
    assert o not in a.preference_list(key, 3) and n in a.preference_list(key, 3)
    runs.unavailable[n] = 1
    return a, n, o, key


def find_newcomer(addresses: list[str]) -> tuple[bytes, str, str, str]:
    """A key, the newcomer N, the replica O it pushes out, and a coordinator replicating
    the key in both rings."""
    for i in range(10_000):
        key = f"key:{i}".encode()
        for n in addresses:
            ring0 = Ring(set(addresses) - {n}, CONFIG.partitions)
            ring1 = Ring(set(addresses), CONFIG.partitions)
            p = ring0.partition_for_key(key)
            first0 = ring0.preference_list(p, 3)
            first1 = ring1.preference_list(p, 3)
            if n in first1 and first0[0] in first1:
                (o,) = set(first0) - set(first1)
                return key, n, o, first0[0]
    raise AssertionError("no key fits")


async def test_a_read_refused_by_a_newcomer_goes_to_the_replica_it_pushed_out(
    cluster: Make,
) -> None:
    """N refuses: the read goes to O, a replica of A's previous ring, with N as the
    hint."""
    runs = Runs()
    a, n, o, key = await newcomer_pushes_out(cluster, runs)
    result = await read(a, key, quorum=3)
    assert sorted(r.node for r in result.ok_replies) == sorted(
        (set(a.preference_list(key, 3)) - {n}) | {o}
    )
    assert runs.ran(o) == [n]
    assert runs.ran(n) == [""]


async def test_a_suspected_previous_holder_is_not_asked(cluster: Make) -> None:
    """As above with O suspected by A: no previous holder is left, N's refusal is counted
    (the quorum of 3 fails) and O runs nothing."""
    runs = Runs()
    a, n, o, key = await newcomer_pushes_out(cluster, runs)
    a._membership.suspect(o)
    with pytest.raises(QuorumNotReachedError) as info:
        await read(a, key, quorum=3)
    assert sorted(info.value.failures) == [n]
    assert isinstance(info.value.failures[n], PeerUnavailableError)
    assert runs.ran(o) == [] and runs.ran(n) == [""]


# -- a quorum read whose coordinator is still pulling the partition ------------------------


def open_later(gate: asyncio.Event, delay: float) -> Callable[[str], None]:
    """An ``on_run`` that opens ``gate`` ``delay`` fake seconds after a run: once the
    read has reached everything it reaches at once (fake time only moves when idle)."""

    def on_run(address: str) -> None:
        asyncio.get_running_loop().call_later(delay, gate.set)

    return on_run


async def test_a_pulling_coordinator_is_asked_last_without_a_hint_after_a_refusal(
    cluster: Make,
) -> None:
    """R3, quorum 2, A still pulling: y and z are asked, A is the spare. y refuses (an
    error status): A is asked, its read waits for its pull (which ends 0.1 s later) and
    its handler then runs without a hint; z and A make the quorum."""
    runs = Runs()
    a, r, gate = await two_ring_changes(cluster, runs, "down", read_speculate_after=None)
    runs.refuse = {r.y}
    runs.on_run = open_later(gate, 0.1)
    result = await read(a, r.key, quorum=2)
    assert sorted(reply.node for reply in result.ok_replies) == sorted([r.z, r.a])
    assert runs.ran(r.a) == [""]
    assert runs.ran(r.y) == [""] and runs.ran(r.z) == [""]
    assert a.sync_status()["reads"] == {"speculative": 0, "retried": 1}


async def test_a_pulling_coordinator_short_of_healthy_replicas_asks_itself_at_once(
    cluster: Make, loop_clock: FakeClock
) -> None:
    """R3, quorum 2, A still pulling, y and z suspected: A and the first of y, z in
    preference order are asked at once (A before the last), the last is a spare never
    asked. A's own run waits for its pull (ending 0.1 s later) and runs without a hint."""
    runs = Runs()
    a, r, gate = await two_ring_changes(cluster, runs, "down", read_speculate_after=None)
    prefs = a.preference_list(r.key, 3)
    (other,) = set(prefs[:2]) - {r.a}
    a._membership.suspect(r.y)
    a._membership.suspect(r.z)
    runs.on_run = open_later(gate, 0.1)
    started = loop_clock.monotonic()
    result = await read(a, r.key, quorum=2)
    assert loop_clock.monotonic() - started >= 0.1  # A answered after its pull
    assert sorted(reply.node for reply in result.ok_replies) == sorted([other, r.a])
    assert runs.ran(r.a) == [""] and runs.ran(other) == [""]
    assert runs.ran(prefs[2]) == []
    assert a.sync_status()["reads"] == {"speculative": 0, "retried": 0}


async def test_a_speculative_request_to_a_pulling_coordinator_carries_no_hint(
    cluster: Make,
) -> None:
    """R3, quorum 2, A still pulling: y is slow, z answers; after read_speculate_after
    (0.05 s) the spare A is asked, and its run (after its pull ends, 0.1 s after z's)
    has no hint."""
    runs = Runs()
    a, r, gate = await two_ring_changes(cluster, runs, "down", read_speculate_after=0.05)
    runs.slow = {r.y}
    runs.on_run = open_later(gate, 0.1)
    result = await read(a, r.key, quorum=2)
    assert sorted(reply.node for reply in result.ok_replies) == sorted([r.z, r.a])
    assert runs.ran(r.a) == [""]
    assert a.sync_status()["reads"] == {"speculative": 1, "retried": 0}
    runs.release.set()


# -- batches (execute_many) -------------------------------------------------------------------


def suspected(node: PeerRing) -> list[str]:
    return list(node.sync_status()["membership"]["suspected"])


def hints_for(node: PeerRing) -> dict[str, int]:
    return dict(node.sync_status()["hints"]["pending"])


def same_partition_keys(node: PeerRing, count: int) -> list[bytes]:
    """``count`` keys of one partition whose preference list ``node`` heads."""
    by_partition: dict[int, list[bytes]] = {}
    for i in range(10_000):
        key = f"key:{i}".encode()
        if node.preference_list(key, 3)[0] != node.address:
            continue
        keys = by_partition.setdefault(node.partition_for_key(key), [])
        keys.append(key)
        if len(keys) == count:
            return keys
    raise AssertionError("no such keys")


async def many(node: PeerRing, command: Command, keys: list[bytes], quorum: int) -> list[Any]:
    items = [(key, b"v") for key in keys]
    return list(
        await asyncio.wait_for(node.execute_many("t", command, items, quorum=quorum), LIMIT)
    )


async def test_a_suspected_replica_answering_a_batch_is_no_longer_suspected(
    cluster: Make,
) -> None:
    """3 nodes, two keys of one partition (one batch per peer), a non-hinted write: the
    suspected replica still gets its batch, and its answer clears the suspicion."""
    runs = Runs()
    c = await cluster(3, runs)
    me, other = c.nodes[0], c.nodes[1]
    keys = same_partition_keys(me, 2)
    me._membership.suspect(other.address)
    assert suspected(me) == [other.address]
    results = await many(me, HIT, keys, quorum=3)
    assert all(len(r.ok_replies) == 3 for r in results)
    assert runs.ran(other.address) == ["", ""]
    assert suspected(me) == []


async def test_a_batch_to_an_unreachable_replica_fails_its_items_there(
    cluster: Make, loop_clock: FakeClock
) -> None:
    """3 nodes, two keys of one partition, a non-hinted write, one replica swallowing
    requests: at the request timeout each key gets that replica's RequestTimeoutError as
    its reply (the quorum of 2 holds), and the replica is suspected."""
    runs = Runs()
    c = await cluster(3, runs)
    me, lost = c.nodes[0], c.nodes[2]
    keys = same_partition_keys(me, 2)
    c.network.pause(lost.address)
    results = await many(me, HIT, keys, quorum=2)
    for result in results:
        replies = {r.node: r for r in await asyncio.wait_for(result.all_replies(), LIMIT)}
        assert sorted(replies) == sorted(n.address for n in c.nodes)
        assert isinstance(replies[lost.address].error, RequestTimeoutError), replies
    assert suspected(me) == [lost.address]
    c.network.resume(lost.address)


async def substitutes_batch(
    cluster: Make, runs: Runs
) -> tuple[Cluster, PeerRing, list[bytes], list[str]]:
    """6 nodes, R3, two keys of one partition headed by the coordinator, whose walk is
    ``walk``; walk[1] is suspected, so both keys' writes for it go to walk[3] as one
    batch of hinted items."""
    c = await cluster(6, runs)
    me = c.nodes[0]
    keys = same_partition_keys(me, 2)
    walk = list(me.preference_list(keys[0], 6))
    me._membership.suspect(walk[1])
    return c, me, keys, walk


def answer_batches(node: PeerRing, peer: str, status: Status, payload: bytes = b"") -> None:
    """``node``'s batch requests to ``peer`` get ``status`` and ``payload`` as their answer
    (what a peer of an older version, without batches, or a stopping one answers)."""
    transport: Any = node.transport
    original = transport.request

    def request(target: str, req: Request) -> asyncio.Future[Response]:
        if target == peer and req.namespace == BATCH:
            fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
            fut.set_result(Response(status, payload, "answered by the test"))
            return fut
        return original(target, req)  # type: ignore[no-any-return]

    transport.request = request


@pytest.mark.parametrize("failure", ["unreachable", "unavailable"])
async def test_a_failed_batch_of_hinted_items_goes_to_the_next_substitute_for_the_replica(
    cluster: Make, failure: str
) -> None:
    """walk[3], holding the batch of hints for walk[1], swallows it (times out) or answers
    it UNAVAILABLE: each write goes on to walk[4], still as a hint for walk[1]."""
    runs = Runs()
    c, me, keys, walk = await substitutes_batch(cluster, runs)
    if failure == "unreachable":
        c.network.pause(walk[3])
    else:
        answer_batches(me, walk[3], Status.UNAVAILABLE)
    results = await many(me, SET, keys, quorum=3)
    for result in results:
        assert sorted(r.node for r in result.ok_replies) == sorted([walk[0], walk[2], walk[4]])
    assert hints_for(c.node(walk[4])) == {walk[1]: 2}
    assert hints_for(c.node(walk[3])) == {}
    c.network.resume(walk[3])


async def test_hinted_items_sent_one_by_one_to_a_peer_without_batches_keep_their_hint(
    cluster: Make,
) -> None:
    """walk[3] answers batches UNKNOWN_COMMAND (an older version): the two hinted items
    go to it as single requests, each still a hint for walk[1] (stored, not run)."""
    runs = Runs()
    c, me, keys, walk = await substitutes_batch(cluster, runs)
    answer_batches(me, walk[3], Status.UNKNOWN_COMMAND)
    results = await many(me, SET, keys, quorum=3)
    for result in results:
        assert sorted(r.node for r in result.ok_replies) == sorted([walk[0], walk[2], walk[3]])
    assert hints_for(c.node(walk[3])) == {walk[1]: 2}
    assert runs.ran(walk[3]) == []


async def test_a_batch_answer_that_does_not_decode_fails_its_items_without_substitutes(
    cluster: Make,
) -> None:
    """4 nodes, R3, two keys of one partition: prefs[1] answers the batch with a success
    whose payload is not a batch answer. Each key counts prefs[1]'s failure (invalid
    argument): a malformed answer is not a reason to write elsewhere, so the fourth node
    stores no hint."""
    runs = Runs()
    c = await cluster(4, runs)
    me = c.nodes[0]
    keys = same_partition_keys(me, 2)
    prefs = me.preference_list(keys[0], 3)
    (spare,) = {n.address for n in c.nodes} - set(prefs)
    answer_batches(me, prefs[1], Status.OK, b"\xff\xff not a batch answer")
    results = await many(me, SET, keys, quorum=2)
    for result in results:
        replies = {r.node: r for r in await asyncio.wait_for(result.all_replies(), LIMIT)}
        assert sorted(replies) == sorted(prefs)
        assert isinstance(replies[prefs[1]].error, InvalidArgumentError), replies
    assert hints_for(c.node(spare)) == {}
    assert runs.ran(spare) == []


async def test_each_previous_holder_is_asked_once(cluster: Make) -> None:
    """x and v both previous holders, both refuse (UNAVAILABLE) once: each is asked once,
    and with no holder left v's refusal is the failure counted in A's place."""
    runs = Runs()
    a, r, _ = await two_ring_changes(cluster, runs, "drop")
    runs.unavailable[r.x] = 1
    runs.unavailable[r.v] = 1
    with pytest.raises(QuorumNotReachedError) as info:
        await read(a, r.key, quorum=3)
    assert sorted(info.value.failures) == [r.v]
    assert runs.ran(r.x) == [r.a] and runs.ran(r.v) == [r.a]


async def test_batched_reads_refused_by_a_previous_holder_go_on_with_their_hint(
    cluster: Make,
) -> None:
    """The "drop" case of two_ring_changes with two keys of the partition read in one
    ``execute_many``: A refuses both (pulling), both go to x in one batch, x refuses each
    item (UNAVAILABLE), and both then go to v, still for A."""
    runs = Runs()
    a, r, _ = await two_ring_changes(cluster, runs, "drop")
    partition = a.partition_for_key(r.key)
    second = next(
        key
        for key in (f"other:{i}".encode() for i in range(10_000))
        if a.partition_for_key(key) == partition
    )
    runs.unavailable[r.x] = 2
    results = await many(a, GET, [r.key, second], quorum=3)
    for result in results:
        assert sorted(reply.node for reply in result.ok_replies) == sorted([r.y, r.z, r.v])
    assert runs.ran(r.x) == [r.a, r.a]
    assert runs.ran(r.v) == [r.a, r.a]


async def test_a_lone_hinted_item_of_execute_many_keeps_its_hint(cluster: Make) -> None:
    """execute_many of one key, prefs[1] suspected: the substitute gets the one item as a
    single request (no batch framing), still a hint for prefs[1] (stored, not run)."""
    runs = Runs()
    c = await cluster(4, runs)
    me = c.nodes[0]
    (key,) = same_partition_keys(me, 1)
    prefs = me.preference_list(key, 3)
    (spare,) = {n.address for n in c.nodes} - set(prefs)
    me._membership.suspect(prefs[1])
    (result,) = await many(me, SET, [key], quorum=3)
    assert sorted(r.node for r in result.ok_replies) == sorted([prefs[0], prefs[2], spare])
    assert hints_for(c.node(spare)) == {prefs[1]: 1}
    assert runs.ran(spare) == []


async def test_a_batch_request_has_the_execute_many_timeout(
    cluster: Make, loop_clock: FakeClock
) -> None:
    """execute_many(timeout=0.3) of two keys, one replica swallowing requests: its batch
    fails at 0.3 s, the call's deadline (not at the node's 1 s request timeout)."""
    runs = Runs()
    c = await cluster(3, runs)
    me, lost = c.nodes[0], c.nodes[2]
    keys = same_partition_keys(me, 2)
    c.network.pause(lost.address)
    started = loop_clock.monotonic()
    items = [(key, b"v") for key in keys]
    results = await asyncio.wait_for(me.execute_many("t", HIT, items, quorum=2, timeout=0.3), LIMIT)
    for result in results:
        replies = {r.node: r for r in await asyncio.wait_for(result.all_replies(), LIMIT)}
        assert isinstance(replies[lost.address].error, RequestTimeoutError), replies
    assert 0.3 <= loop_clock.monotonic() - started <= 0.3 + 0.05
    c.network.resume(lost.address)


def record_sends(node: PeerRing) -> dict[str, list[int]]:
    """Per peer, the items of each request ``node`` sends it, in order (1: a single
    request, more: a batch of that many)."""
    sent: dict[str, list[int]] = {}
    transport: Any = node.transport
    request, submit = transport.request, transport.submit

    def batch(target: str, req: Request) -> asyncio.Future[Response]:
        if req.namespace == BATCH:
            sent.setdefault(target, []).append(len(decode_items(req.payload)[1]))
        return request(target, req)  # type: ignore[no-any-return]

    def single(target: str, *args: Any) -> None:
        sent.setdefault(target, []).append(1)
        submit(target, *args)

    transport.request, transport.submit = batch, single
    return sent


#: Items' encoded sizes, as functions of the frame budget B, and the items of each request
#: a peer gets for them.
SPLITS: dict[str, tuple[Callable[[int], list[int]], list[int]]] = {
    # Two items exactly filling the budget: one batch.
    "fill": (lambda b: [b // 2, b - b // 2], [2]),
    # One item alone (the next does not fit), then two exactly filling it again.
    "fill-after-a-split": (lambda b: [b - 10, b // 2, b - b // 2], [1, 2]),
    # Two items one byte over the budget: two single requests.
    "one-over": (lambda b: [b // 2, b - b // 2 + 1], [1, 1]),
}


@pytest.mark.parametrize("case", sorted(SPLITS))
async def test_a_batch_is_split_only_past_the_frame_budget(cluster: Make, case: str) -> None:
    """execute_many of keys of one partition whose items have the case's encoded sizes:
    each peer gets requests of exactly as many items as fit the coordinator's frame
    budget, in order (items that fill it to the byte are not split)."""
    runs = Runs()
    c = await cluster(3, runs)
    me = c.nodes[0]
    sizes_of, expected = SPLITS[case]
    sizes = sizes_of(me._coord._frame_budget)
    keys = same_partition_keys(me, len(sizes))
    items = [
        (k, b"x" * (size - item_size(k, b"", ""))) for k, size in zip(keys, sizes, strict=True)
    ]
    assert [item_size(k, p, "") for k, p in items] == sizes
    sent = record_sends(me)
    results = await asyncio.wait_for(me.execute_many("t", HIT, items, quorum=3), LIMIT)
    assert all(len(r.ok_replies) == 3 for r in results)
    assert sent == {n.address: expected for n in c.nodes[1:]}


# -- direct requests: outcomes through on_done ------------------------------------------------


async def test_a_request_ending_cancelled_is_the_replica_s_failure_not_forwarded(
    cluster: Make,
) -> None:
    """4 nodes, R3, a hinted write; the transport ends prefs[1]'s request cancelled: its
    reply is a RequestTimeoutError "request to <prefs[1]> cancelled", the write goes to
    no substitute, and prefs[1] is not suspected (nothing says it is unreachable)."""
    runs = Runs()
    c = await cluster(4, runs, plain=True)
    me = c.nodes[0]
    (key,) = same_partition_keys(me, 1)
    prefs = me.preference_list(key, 3)
    (spare,) = {n.address for n in c.nodes} - set(prefs)
    transport: Any = me.transport
    request = transport.request

    def cancelling(target: str, req: Request) -> asyncio.Future[Response]:
        fut: asyncio.Future[Response] = request(target, req)
        if target == prefs[1]:
            fut.cancel()
        return fut

    transport.request = cancelling
    result = await read_write(me, SET, key, quorum=2)
    replies = {r.node: r for r in await asyncio.wait_for(result.all_replies(), LIMIT)}
    assert sorted(replies) == sorted(prefs)
    error = replies[prefs[1]].error
    assert isinstance(error, RequestTimeoutError), replies
    assert str(error) == f"request to {prefs[1]} cancelled"
    assert hints_for(c.node(spare)) == {} and runs.ran(spare) == []
    assert suspected(me) == []


async def test_a_suspected_replica_answering_is_cleared_without_the_direct_path(
    cluster: Make,
) -> None:
    """The memory transport itself (answers through ``on_done``): a suspected replica
    that answers a non-hinted write is no longer suspected."""
    runs = Runs()
    c = await cluster(3, runs, plain=True)
    me, other = c.nodes[0], c.nodes[1]
    (key,) = same_partition_keys(me, 1)
    me._membership.suspect(other.address)
    result = await read_write(me, HIT, key, quorum=3)
    assert len(result.ok_replies) == 3
    assert suspected(me) == []


async def test_an_unreachable_substitute_s_write_goes_on_for_the_original_replica(
    cluster: Make,
) -> None:
    """6 nodes, R3, execute of a hinted write with walk[1] suspected: its substitute
    walk[3] swallows the request, so at the timeout the write goes to walk[4], still as
    a hint for walk[1]."""
    runs = Runs()
    c, me, keys, walk = await substitutes_batch(cluster, runs)
    c.network.pause(walk[3])
    result = await read_write(me, SET, keys[0], quorum=3)
    assert sorted(r.node for r in result.ok_replies) == sorted([walk[0], walk[2], walk[4]])
    assert hints_for(c.node(walk[4])) == {walk[1]: 1}
    c.network.resume(walk[3])


async def read_write(node: PeerRing, command: Command, key: bytes, quorum: int) -> Any:
    return await asyncio.wait_for(node.execute("t", command, key, b"v", quorum=quorum), LIMIT)


# -- the coordinator as a previous holder -------------------------------------------------------


def find_pushed_out(addresses: list[str]) -> tuple[bytes, str, str, str, str]:
    """A key, and (A, O, Y, N): the first three replicate everything while they are the
    only members; once the other two join, the key's replicas are Y and the newcomers,
    and A comes before O in the old preference list. N is one of the newcomers."""
    old = set(addresses[:3])
    ring0 = Ring(old, CONFIG.partitions)
    ring1 = Ring(set(addresses), CONFIG.partitions)
    for i in range(10_000):
        key = f"key:{i}".encode()
        p = ring0.partition_for_key(key)
        first0 = ring0.preference_list(p, 3)
        first1 = ring1.preference_list(p, 3)
        kept = set(first1) & old
        if len(kept) == 1:
            (y,) = kept
            a, o = (m for m in first0 if m != y)
            (n, *_) = (m for m in first1 if m not in old)
            return key, a, o, y, n
    raise AssertionError("no key fits")


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "task"])
async def test_a_coordinator_that_is_a_previous_holder_and_refuses_passes_the_hint_on(
    cluster: Make, inline: bool
) -> None:
    """5 nodes; A, O, Y alone at first (each replicates every key), then A's discovery
    adds the two others, whose joining pushes A and O out of the key's replicas. A
    newcomer N refuses A's read: the read goes to the previous holders in order, A itself
    (with N as the hint), which refuses too (UNAVAILABLE, answered at once or from a
    Task), then O, still with N as the hint."""
    runs = Runs()
    addresses = [f"10.0.0.{i}:7000" for i in range(1, 6)]
    key, a_address, o, y, n = find_pushed_out(addresses)
    old = [0, 1, 2]
    c = await cluster(5, runs, views=dict.fromkeys(old, old))
    a = c.node(a_address)
    c.discoveries[a.address].set_members(addresses)
    await until(lambda: len(a.ring) == 5)
    assert a.address not in a.preference_list(key, 3) and y in a.preference_list(key, 3)
    runs.unavailable = {n: 1, a.address: 1}
    if inline:
        runs.inline = {a.address}
    result = await read(a, key, quorum=3)
    assert sorted(r.node for r in result.ok_replies) == sorted(
        (set(a.preference_list(key, 3)) - {n}) | {o}
    )
    assert runs.ran(n) == [""]
    assert runs.ran(a.address) == [n]
    assert runs.ran(o) == [n]


async def test_the_coordinator_answering_last_as_a_previous_holder_completes_the_replies(
    cluster: Make,
) -> None:
    """As above, every replica asked (``read_fanout="all"``), a quorum of 1: the other
    newcomer answers (the execute returns), the other replica Y refuses (an error status,
    counted), and the newcomer N refuses late (UNAVAILABLE: forwarded), so A, the first
    previous holder, answers inline last: its answer completes the result's replies."""
    runs = Runs()
    addresses = [f"10.0.0.{i}:7000" for i in range(1, 6)]
    key, a_address, _o, y, n = find_pushed_out(addresses)
    old = [0, 1, 2]
    c = await cluster(5, runs, views=dict.fromkeys(old, old), read_fanout="all")
    a = c.node(a_address)
    c.discoveries[a.address].set_members(addresses)
    await until(lambda: len(a.ring) == 5)
    prefs = a.preference_list(key, 3)
    (other,) = set(prefs) - {n, y}
    runs.unavailable = {n: 1}
    runs.slow = {n}
    runs.refuse = {y}
    runs.inline = {a.address}
    result = await read(a, key, quorum=1)
    assert [r.node for r in result.ok_replies] == [other]
    waiting = asyncio.ensure_future(result.all_replies())
    await until(lambda: len(result.replies) == 2)  # Y's failure counted too
    runs.release.set()
    replies = {r.node: r for r in await asyncio.wait_for(waiting, LIMIT)}
    assert sorted(replies) == sorted([y, other, a.address])
    assert isinstance(replies[y].error, InvalidArgumentError)
    assert replies[a.address].error is None and replies[other].error is None
    assert runs.ran(a.address) == [n]


async def test_a_full_read_by_a_pulling_coordinator_runs_here_without_a_hint_after_the_pull(
    cluster: Make,
) -> None:
    """A (still pulling) reads with a quorum of 3, every replica asked at once: its own
    run waits for its pull (ending 0.1 s after the first remote run) and then runs
    without a hint."""
    runs = Runs()
    a, r, gate = await two_ring_changes(cluster, runs, "down")
    runs.on_run = open_later(gate, 0.1)
    result = await read(a, r.key, quorum=3)
    assert sorted(reply.node for reply in result.ok_replies) == sorted([r.y, r.a, r.z])
    assert runs.ran(r.a) == [""]


async def test_batched_quorum_reads_carry_no_hint(cluster: Make) -> None:
    """execute_many of two keys with a quorum of 2 (a quorum read each, in batches):
    every run has an empty hint."""
    runs = Runs()
    c = await cluster(3, runs, read_speculate_after=None)
    me = c.nodes[0]
    keys = same_partition_keys(me, 2)
    results = await many(me, GET, keys, quorum=2)
    assert all(len(r.ok_replies) == 2 for r in results)
    assert len(runs.seen) == 4
    assert {hint for _, hint in runs.seen} == {""}


async def test_the_substitute_search_looks_max_n_3_nodes_past_the_replicas(
    cluster: Make,
) -> None:
    """7 nodes, R3: walk[1] and the three nodes after the replicas (walk[3..5]) are
    suspected. The search for walk[1]'s substitute looks at those three only (max(N, 3)
    past the preference list), finds none, and the write goes to walk[1] itself: walk[6]
    stores no hint."""
    runs = Runs()
    c = await cluster(7, runs)
    me = c.nodes[0]
    (key,) = same_partition_keys(me, 1)
    walk = list(me.preference_list(key, 7))
    for address in (walk[1], walk[3], walk[4], walk[5]):
        me._membership.suspect(address)
    result = await read_write(me, SET, key, quorum=3)
    assert sorted(r.node for r in result.ok_replies) == sorted(walk[:3])
    assert all(hints_for(c.node(a)) == {} for a in walk)
