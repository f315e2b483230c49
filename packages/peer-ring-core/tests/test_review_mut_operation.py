"""Review: mutants of ``core/_operation.py`` that survived tools/mutation, killed here.

Each test pins one behaviour of an operation's fan-out that the earlier unit tests left
open (the mutant names are mutmut's, ``xǁOperationǁ<method>__mutmut_<n>``):

- a local handler's Task that ends cancelled is a failed reply of this node (a
  ``RequestTimeoutError`` naming it), not forwarded to a substitute (``_local_done``);
- a suspected replica that answers, with a success or an error status, is no longer
  suspected (``answered`` / ``on_response``: only suspects, no down peers);
- a quorum read whose spares were used up by refusals asks no one more when its
  speculative deadline fires, and a spare's request keeps the operation's deadline
  (``expire``, ``send_direct``);
- a read its caller cancelled asks no spare afterwards (``expire``);
- speculative requests carry no hint (``expire``);
- a hinted write's substitutes skip suspected and already chosen nodes, one substitute
  per suspected replica (``_substitute``, ``use``).

Memory network, fake time; what is observed is public: replies and their errors, which
handler ran with which hint, hints stored per node, suspicion and read counters in
``sync_status()``.
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
    QuorumNotReachedError,
    RequestTimeoutError,
)
from peer_ring.core._types import Request, Response, Status
from peer_ring.core.proto import peer_ring_pb2 as pb
from peer_ring.core.testing import FakeClock, FixedDiscovery, MemoryNetwork, MemoryTransport
from peer_ring.core.transport import TransportLimits
from peer_ring.core.transport._base import CallOwner
from peer_ring.core.transport._codec import request_fields_part, request_from_pb, request_part

pytestmark = pytest.mark.fake_time

SET = Command("set", mutates=True)
GET = Command("get", reads=True)
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


def _route(owner: CallOwner, peer: str, hint: str, fut: asyncio.Future[Response]) -> None:
    if fut.cancelled() or fut.exception() is not None:
        owner.on_done(peer, hint, fut)
    elif fut.result().status == Status.OK:
        owner.answered(peer, hint, fut.result().payload)
    else:
        owner.on_response(peer, hint, fut.result())


class OwnerTransport(MemoryTransport):
    """The memory transport with the real transports' answer path (a success reaches
    ``owner.answered``, an error status ``owner.on_response``: ``Transport.submit``), and
    their wire: the fields are encoded as the TCP transport encodes them and the peer gets
    what the wire carries (a field the wire cannot carry fails as it would there)."""

    def submit(self, peer: str, owner: CallOwner, hint: str, *fields: Any) -> None:
        # Transport.submit's fields after the hint, in order (called positionally).
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
    """What each node's handler saw (address, payload, hint), and how it behaves: nodes in
    ``refuse`` raise, in ``slow`` wait for ``release``, in ``cancel`` end cancelled."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bytes, str]] = []
        #: (address, ctx.source, ctx.local) per run.
        self.sources: list[tuple[str, str, bool]] = []
        self.refuse: set[str] = set()
        self.slow: set[str] = set()
        self.cancel: set[str] = set()
        self.release = asyncio.Event()

    def handler(self, address: str) -> Callable[..., Any]:
        async def run(ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
            self.seen.append((address, payload, ctx.hint))
            self.sources.append((address, ctx.source, ctx.local))
            if address in self.slow:
                await self.release.wait()
            if address in self.cancel:
                raise asyncio.CancelledError  # the handler's Task ends cancelled
            if address in self.refuse:
                raise InvalidArgumentError(f"{address} refuses")
            return b"ok from " + address.encode()

        return run

    def ran(self, address: str) -> list[str]:
        """The hints of the runs on ``address``."""
        return [hint for a, _, hint in self.seen if a == address]


Cluster = Callable[..., Any]


@pytest.fixture
async def cluster(loop_clock: FakeClock) -> AsyncIterator[Cluster]:
    """``await cluster(count, runs, network=None, **config)``: ``count`` ready nodes on
    one memory network (``OwnerTransport``; a new one unless given), ``runs``'s handler for
    SET, GET and HIT; stopped after."""
    made: list[PeerRing] = []

    async def make(
        count: int, runs: Runs, network: MemoryNetwork | None = None, **overrides: Any
    ) -> list[PeerRing]:
        network = network or MemoryNetwork(loop_clock)
        addresses = [f"10.0.0.{i}:7000" for i in range(1, count + 1)]
        config = dataclasses.replace(CONFIG, **overrides)
        nodes = []
        for address in addresses:
            node = PeerRing(
                FixedDiscovery(address, addresses),
                config=config,
                transport=OwnerTransport(network, address, TransportLimits()),
                clock=loop_clock,
            )
            for command in (SET, GET, HIT):
                node.register("t", command, runs.handler(address))
            made.append(node)
            await node.start()
            nodes.append(node)
        for node in nodes:
            await node.wait_ready(5.0)
        return nodes

    yield make
    for node in made:
        await node.stop()


def key_headed_by(node: PeerRing, n: int) -> bytes:
    for i in range(10_000):
        key = f"key:{i}".encode()
        if node.preference_list(key, n)[0] == node.address:
            return key
    raise AssertionError("no key headed by the node")


def by_address(nodes: list[PeerRing]) -> dict[str, PeerRing]:
    return {n.address: n for n in nodes}


def suspected(node: PeerRing) -> list[str]:
    return list(node.sync_status()["membership"]["suspected"])


async def test_a_local_handler_task_ending_cancelled_is_this_node_s_failed_reply(
    cluster: Cluster,
) -> None:
    """_local_done: the reply of this node is a RequestTimeoutError 'run on <me>
    cancelled', and the write is not forwarded to a substitute (4 nodes, R3)."""
    runs = Runs()
    nodes = await cluster(4, runs)
    me = nodes[0]
    key = key_headed_by(me, 3)
    prefs = me.preference_list(key, 3)
    (spare,) = {n.address for n in nodes} - set(prefs)
    runs.cancel = {me.address}
    result = await me.execute("t", SET, key, b"v")
    replies = {r.node: r for r in await asyncio.wait_for(result.all_replies(), 5.0)}
    assert sorted(replies) == sorted(prefs)
    mine = replies[me.address]
    assert isinstance(mine.error, RequestTimeoutError), mine
    assert str(mine.error) == f"run on {me.address} cancelled"
    assert mine.payload == b""
    assert all(replies[p].error is None for p in prefs[1:])
    assert runs.ran(spare) == []
    assert by_address(nodes)[spare].sync_status()["hints"]["stored"] == 0
    # Every replica failing that way fails the quorum, with this node among the failures.
    runs.cancel = set(prefs)
    with pytest.raises(QuorumNotReachedError) as info:
        await me.execute("t", SET, key, b"w")
    assert isinstance(info.value.failures[me.address], RequestTimeoutError)
    assert runs.ran(spare) == []


@pytest.mark.parametrize("answer", ["success", "error-status"])
async def test_a_suspected_replica_that_answers_is_no_longer_suspected(
    cluster: Cluster, answer: str
) -> None:
    """answered / on_response: suspicion alone (no peer down) is cleared by an answer."""
    runs = Runs()
    nodes = await cluster(3, runs)
    me = nodes[0]
    key = key_headed_by(me, 3)
    other = me.preference_list(key, 3)[1]
    me._membership.suspect(other)
    assert suspected(me) == [other]
    if answer == "error-status":
        runs.refuse = {other}
    result = await me.execute("t", HIT, key, b"v", quorum=2)
    replies = {r.node: r for r in await asyncio.wait_for(result.all_replies(), 5.0)}
    assert (replies[other].error is None) == (answer == "success")
    assert suspected(me) == []


async def test_a_read_whose_spares_were_used_up_asks_no_one_at_its_speculative_deadline(
    cluster: Cluster, loop_clock: FakeClock
) -> None:
    """R4, quorum 2: this node and prefs[1] asked, prefs[2] and prefs[3] spares. prefs[1]
    and prefs[2] refuse (each refusal asks the next spare at once), prefs[3] never
    answers: at read_speculate_after nothing is left to ask (no speculative request), and
    the read fails at its own 1 s deadline (the spare's request kept it)."""
    runs = Runs()
    nodes = await cluster(4, runs, replication=4, read_speculate_after=0.25)
    me = nodes[0]
    key = key_headed_by(me, 4)
    prefs = me.preference_list(key, 4)
    runs.refuse = {prefs[1], prefs[2]}
    runs.slow = {prefs[3]}
    started = loop_clock.monotonic()
    with pytest.raises(QuorumNotReachedError) as info:
        await me.execute("t", GET, key, b"r", quorum=2, timeout=1.0)
    assert 1.0 <= loop_clock.monotonic() - started <= 1.0 + 0.05
    assert info.value.succeeded == [me.address]
    assert isinstance(info.value.failures[prefs[3]], RequestTimeoutError)
    assert me.sync_status()["reads"] == {"speculative": 0, "retried": 2}
    assert [a for a, _, _ in runs.seen] == list(prefs)  # each asked once, in order
    assert [h for _, _, h in runs.seen] == [""] * 4  # the spares are asked without a hint
    runs.release.set()


async def test_a_read_cancelled_by_its_caller_asks_no_spare_afterwards(
    cluster: Cluster,
) -> None:
    runs = Runs()
    nodes = await cluster(4, runs, replication=4, read_speculate_after=0.25)
    me = nodes[0]
    key = key_headed_by(me, 4)
    prefs = me.preference_list(key, 4)
    runs.slow = {prefs[1]}
    read = asyncio.ensure_future(me.execute("t", GET, key, b"r", quorum=2, timeout=5.0))
    for _ in range(20):
        await asyncio.sleep(0)  # the read is sent (this node's run and prefs[1]'s)
    assert sorted(a for a, _, _ in runs.seen) == sorted(prefs[:2])
    read.cancel()
    await asyncio.sleep(2.0)  # fake time: the speculative deadlines pass
    assert read.cancelled()
    assert sorted(a for a, _, _ in runs.seen) == sorted(prefs[:2])
    assert me.sync_status()["reads"] == {"speculative": 0, "retried": 0}
    runs.release.set()


async def test_speculative_requests_carry_no_hint(cluster: Cluster) -> None:
    runs = Runs()
    nodes = await cluster(4, runs, replication=4, read_speculate_after=0.25)
    me = nodes[0]
    key = key_headed_by(me, 4)
    prefs = me.preference_list(key, 4)
    runs.slow = {prefs[1], prefs[2]}
    result = await me.execute("t", GET, key, b"r", quorum=2, timeout=5.0)
    assert sorted(r.node for r in result.ok_replies) == sorted([prefs[0], prefs[3]])
    assert me.sync_status()["reads"]["speculative"] == 2
    for address in prefs:
        assert runs.ran(address) == [""], (address, runs.seen)
    runs.release.set()


async def test_a_hinted_write_s_substitutes_skip_suspected_and_chosen_nodes(
    cluster: Cluster,
) -> None:
    """6 nodes, R3: prefs[1], prefs[2] and the first node of the walk beyond them are
    suspected. prefs[1]'s write goes to walk[4] (walk[3] suspected), prefs[2]'s to walk[5]
    (walk[4] chosen already): each substitute stores one hint, for its replica."""
    runs = Runs()
    nodes = await cluster(6, runs)
    me = nodes[0]
    key = key_headed_by(me, 6)
    walk = me.preference_list(key, 6)
    for address in (walk[1], walk[2], walk[3]):
        me._membership.suspect(address)
    result = await me.execute("t", SET, key, b"v", quorum=3)
    replies = await asyncio.wait_for(result.all_replies(), 5.0)
    assert sorted(r.node for r in replies) == sorted([walk[0], walk[4], walk[5]])
    assert all(r.error is None for r in replies)
    node = by_address(nodes)
    stored = {a: node[a].sync_status()["hints"]["stored"] for a in walk}
    assert stored == {walk[0]: 0, walk[1]: 0, walk[2]: 0, walk[3]: 0, walk[4]: 1, walk[5]: 1}
    assert node[walk[4]].sync_status()["hints"]["pending"] == {walk[1]: 1}
    assert node[walk[5]].sync_status()["hints"]["pending"] == {walk[2]: 1}
    assert runs.ran(walk[0]) == [""]  # the substitutes stored hints, ran nothing
    assert all(runs.ran(a) == [] for a in walk[1:])


async def test_a_quorum_read_asks_suspected_replicas_last(cluster: Cluster) -> None:
    """R4, quorum 2, prefs[1] suspected: this node and prefs[2] are asked, the spares are
    prefs[3] then prefs[1]. prefs[2] and prefs[3] refuse: prefs[1] answers last."""
    runs = Runs()
    nodes = await cluster(4, runs, replication=4)
    me = nodes[0]
    key = key_headed_by(me, 4)
    prefs = me.preference_list(key, 4)
    me._membership.suspect(prefs[1])
    runs.refuse = {prefs[2], prefs[3]}
    result = await me.execute("t", GET, key, b"r", quorum=2)
    assert sorted(r.node for r in result.ok_replies) == sorted([me.address, prefs[1]])
    assert [a for a, _, _ in runs.seen] == [prefs[0], prefs[2], prefs[3], prefs[1]]
    assert me.sync_status()["reads"] == {"speculative": 0, "retried": 2}


async def test_a_quorum_read_short_of_healthy_replicas_asks_suspected_ones_too(
    cluster: Cluster,
) -> None:
    """R4, quorum 3, prefs[2] and prefs[3] suspected: this node, prefs[1] and prefs[2]
    (the first suspected one) are asked at once; prefs[3] stays a spare."""
    runs = Runs()
    nodes = await cluster(4, runs, replication=4)
    me = nodes[0]
    key = key_headed_by(me, 4)
    prefs = me.preference_list(key, 4)
    me._membership.suspect(prefs[2])
    me._membership.suspect(prefs[3])
    result = await me.execute("t", GET, key, b"r", quorum=3)
    replies = await asyncio.wait_for(result.all_replies(), 5.0)
    assert sorted(r.node for r in replies) == sorted(prefs[:3])
    assert all(r.error is None for r in replies)
    assert sorted(a for a, _, _ in runs.seen) == sorted(prefs[:3])


async def test_a_write_to_an_unreachable_replica_goes_to_a_substitute_with_its_hint(
    cluster: Cluster, loop_clock: FakeClock
) -> None:
    """4 nodes, R3: prefs[1] swallows requests. At the 1 s deadline its write goes to the
    fourth node as a hint for prefs[1] (stored, not run there)."""
    runs = Runs()
    network = MemoryNetwork(loop_clock)
    nodes = await cluster(4, runs, network)
    me = nodes[0]
    key = key_headed_by(me, 3)
    prefs = me.preference_list(key, 3)
    (spare,) = {n.address for n in nodes} - set(prefs)
    network.pause(prefs[1])
    result = await me.execute("t", SET, key, b"v")
    replies = {r.node: r for r in await asyncio.wait_for(result.all_replies(), 5.0)}
    assert sorted(replies) == sorted([prefs[0], prefs[2], spare])
    assert all(r.error is None for r in replies.values())
    status = by_address(nodes)[spare].sync_status()["hints"]
    assert status["stored"] == 1 and status["pending"] == {prefs[1]: 1}
    assert runs.ran(spare) == []
    assert suspected(me) == [prefs[1]]  # its request failed unanswered
    network.resume(prefs[1])


@pytest.mark.parametrize("keys", [1, 2, 5])
async def test_execute_many_answers_every_key_from_every_replica(
    cluster: Cluster, keys: int
) -> None:
    """Keys all replicated by the 3 nodes: one item per peer goes alone (no batch
    framing), more share one batch request per peer; every key gets all 3 answers."""
    runs = Runs()
    nodes = await cluster(3, runs)
    me = nodes[0]
    items = [(b"many:%d" % i, b"p%d" % i) for i in range(keys)]
    results = await me.execute_many("t", SET, items, quorum=3)
    assert [r.key for r in results] == [k for k, _ in items]
    for result in results:
        assert sorted(r.node for r in result.ok_replies) == sorted(n.address for n in nodes)
    for node in nodes:
        mine = sorted(p for a, p, _ in runs.seen if a == node.address)
        assert mine == sorted(p for _, p in items), node.address
    assert {h for _, _, h in runs.seen} == {""}


async def test_this_node_s_run_is_local_and_bounded_by_the_operation_s_timeout(
    cluster: Cluster, loop_clock: FakeClock
) -> None:
    """This node's handler sees itself as the source and ``local``; a slow one is cancelled
    at the execute's timeout (0.3 s), not the node's request_timeout (1 s)."""
    runs = Runs()
    nodes = await cluster(3, runs)
    me = nodes[0]
    key = key_headed_by(me, 3)
    await me.execute("t", SET, key, b"v", quorum=3)
    others = [n.address for n in nodes[1:]]
    assert sorted(runs.sources) == sorted(
        [(me.address, me.address, True)] + [(a, me.address, False) for a in others]
    )
    runs.slow = {me.address}
    started = loop_clock.monotonic()
    result = await me.execute("t", SET, key, b"w", quorum=2, timeout=0.3)
    replies = {r.node: r for r in await asyncio.wait_for(result.all_replies(), 5.0)}
    assert loop_clock.monotonic() - started <= 0.3 + 0.05
    mine = replies[me.address].error
    assert isinstance(mine, RequestTimeoutError), replies
    assert f"handler on {me.address} timed out after 0.3s" in str(mine)
    runs.release.set()
