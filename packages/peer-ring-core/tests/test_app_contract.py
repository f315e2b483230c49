"""The application contract on the in-memory network: Command, execute / execute_many,
send, call, the one handler path and ownership notifications."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

import pytest

from peer_ring.core import (
    DIGEST_BUCKETS,
    Command,
    CommandContext,
    ExecuteResult,
    InvalidArgumentError,
    NotRunningError,
    OwnershipChange,
    PeerRing,
    PeerRingConfig,
    QuorumNotReachedError,
    RemoteError,
    UnknownCommandError,
    bucket_for_key,
    partition_for_key,
)
from peer_ring.core._types import Request, Response, Status
from peer_ring.core.testing import FixedDiscovery, settle_loop

P = 32
ADDRS = [f"127.0.0.{i}:7101" for i in range(1, 6)]

PUT = Command("put", mutates=True)
GET = Command("get", reads=True)
BUMP = Command("bump", mutates=True, hinted=False)
RAW = Command("raw")
BOOM = Command("boom")


class App:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.bumps = Counter[bytes]()
        self.sources: list[tuple[str, bool]] = []

    def put(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        if payload == b"explode":
            raise RuntimeError(f"cannot store {key!r}")
        self.data[key] = payload
        return b""

    def get(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        return self.data.get(key, b"")

    def bump(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        self.bumps[key] += 1
        self.sources.append((ctx.source, ctx.local))
        return b""

    def raw(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytearray | memoryview:
        # bytearray / memoryview are accepted and converted on both paths
        return bytearray(b"ba:" + key) if payload == b"ba" else memoryview(b"mv:" + key)

    # DataHooks (records: 2-byte key length, key, value) ------------------------------------

    def export_partition(
        self, partition: int, buckets: Collection[int] | None = None
    ) -> Iterable[bytes]:
        for key, value in list(self.data.items()):
            if partition_for_key(key, P) == partition:
                yield len(key).to_bytes(2, "big") + key + value

    def apply_records(self, partition: int, records: Sequence[bytes]) -> None:
        for record in records:
            size = int.from_bytes(record[:2], "big")
            self.data.setdefault(record[2 : 2 + size], record[2 + size :])

    def drop_partition(self, partition: int) -> None:
        for key in [k for k in self.data if partition_for_key(k, P) == partition]:
            del self.data[key]

    def digest_partition(self, partition: int) -> Sequence[bytes]:
        digests = [b""] * DIGEST_BUCKETS
        for key in self.data:
            if partition_for_key(key, P) == partition:
                digests[bucket_for_key(key)] = b"x"  # presence only: enough here
        return digests

    def boom(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        if payload == b"typed":
            raise InvalidArgumentError("payload rejected")
        if payload == b"wrong-type":
            return "not bytes"  # type: ignore[return-value]
        raise RuntimeError("handler exploded")


#: ``app_cluster(...)``: an ``AppCluster`` of conftest.py.
Cluster = Any
#: ``memory_config(partitions, replication)`` of conftest.py.
ConfigFactory = Callable[[int, int], PeerRingConfig]


@pytest.fixture
def cluster(app_cluster: Callable[..., Cluster], memory_config: ConfigFactory) -> Cluster:
    """Nodes of ``ADDRS`` on one in-memory network, each with an ``App`` under ``"t"``."""
    handlers = {PUT: App.put, GET: App.get, BUMP: App.bump, RAW: App.raw, BOOM: App.boom}
    return app_cluster(memory_config(P, 3), lambda node: App(), handlers, hooks=True)


# -- Command ---------------------------------------------------------------------------------


def test_command_declaration_defaults_and_validation() -> None:
    assert PUT.hinted and PUT.mutates and not PUT.reads
    assert not GET.hinted and not GET.mutates and GET.reads
    assert not BUMP.hinted and BUMP.mutates
    assert Command("x") == Command("x", reads=False, mutates=False, hinted=False)
    with pytest.raises(InvalidArgumentError, match="hinted=True requires mutates=True"):
        Command("x", reads=True, hinted=True)
    with pytest.raises(InvalidArgumentError, match="non-empty"):
        Command("")
    with pytest.raises(AttributeError):
        PUT.name = "other"  # type: ignore[misc]


async def test_execute_accepts_the_command_or_its_name_and_rejects_a_mismatch(
    cluster: Cluster,
) -> None:
    a, b, _ = await cluster.start_ready(ADDRS[:3])
    await a.execute("t", PUT, b"k", b"v", quorum=3)
    result = await b.execute("t", "get", b"k", quorum=3)
    assert result.payloads == [b"v"] * 3 and result.ok and result.key == b"k"
    with pytest.raises(InvalidArgumentError, match="registered as"):
        await a.execute("t", Command("put"), b"k", b"v")
    with pytest.raises(InvalidArgumentError, match="already registered"):
        a.register("t", Command("put"), cluster.apps[a.address].put)
    with pytest.raises(InvalidArgumentError, match="reserved"):
        a.register("__peer_ring_batch__", Command("x"), cluster.apps[a.address].put)


# -- the one handler path ------------------------------------------------------------------


@pytest.mark.parametrize("mode", [b"ba", b"mv"])
async def test_bytearray_and_memoryview_results_work_locally_and_remotely(
    cluster: Cluster, mode: bytes
) -> None:
    a, b, _ = await cluster.start_ready(ADDRS[:3])
    prefix = b"ba:" if mode == b"ba" else b"mv:"
    assert await a.call(a.address, "t", RAW, b"k", mode) == prefix + b"k"  # local
    assert await a.call(b.address, "t", RAW, b"k", mode) == prefix + b"k"  # remote
    result = await a.execute("t", RAW, b"k", mode, quorum=3)  # local and remote replicas
    assert result.payloads == [prefix + b"k"] * 3
    assert all(type(p) is bytes for p in result.payloads)


async def test_handler_errors_map_the_same_locally_and_remotely(cluster: Cluster) -> None:
    a, b, _ = await cluster.start_ready(ADDRS[:3])
    for node in (a.address, b.address):
        with pytest.raises(RemoteError, match="RuntimeError: handler exploded"):
            await a.call(node, "t", BOOM, b"k", b"")
        with pytest.raises(InvalidArgumentError, match="payload rejected"):
            await a.call(node, "t", BOOM, b"k", b"typed")
        with pytest.raises(RemoteError, match="handler returned str, not bytes"):
            await a.call(node, "t", BOOM, b"k", b"wrong-type")
        with pytest.raises(UnknownCommandError):
            await a.call(node, "t", "nope", b"k")
    with pytest.raises(QuorumNotReachedError) as info:
        await a.execute("t", BOOM, b"k", b"", quorum=1)  # fails once all three failed
    failures = info.value.failures
    assert len(failures) == 3 and all(isinstance(e, RemoteError) for e in failures.values())


# -- execute_many ----------------------------------------------------------------------------


async def test_execute_many_sends_one_request_per_peer_and_keeps_the_order(
    cluster: Cluster,
) -> None:
    a, _, _, _ = await cluster.start_ready(ADDRS[:4])
    sent = cluster.count_requests(a)
    items = [(f"key-{i}".encode(), b"v%d" % i) for i in range(60)]
    results = await a.execute_many("t", PUT, items, quorum=3)
    assert [r.key for r in results] == [k for k, _ in items]
    assert all(isinstance(r, ExecuteResult) and r.ok and r.error is None for r in results)
    assert all(len(r.ok_replies) >= 3 for r in results)
    assert set(sent) == set(ADDRS[1:4]) and all(v == 1 for v in sent.values()), sent
    for key, value in items:
        holders = {addr for addr, app in cluster.apps.items() if app.data.get(key) == value}
        assert holders == set(a.preference_list(key, 3))
    reads = await a.execute_many("t", GET, [(k, b"") for k, _ in items] + [(b"absent", b"")])
    assert [r.payloads[0] for r in reads] == [v for _, v in items] + [b""]
    assert await a.execute_many("t", PUT, []) == []


async def test_execute_many_reports_per_key_failures_without_raising(cluster: Cluster) -> None:
    a, _, _ = await cluster.start_ready(ADDRS[:3])
    items = [(b"good-1", b"v"), (b"bad", b"explode"), (b"good-2", b"w")]
    results = await a.execute_many("t", PUT, items, quorum=2)
    assert [r.ok for r in results] == [True, False, True]
    error = results[1].error
    assert isinstance(error, QuorumNotReachedError) and "cannot store" in str(error)
    # bad arguments are still raised at once, before anything is sent
    with pytest.raises(InvalidArgumentError):
        await a.execute_many("t", PUT, items, replication=2, quorum=3)
    with pytest.raises(InvalidArgumentError, match="payloads are bytes"):
        await a.execute_many("t", PUT, [(b"k", "text")])  # type: ignore[list-item]


async def test_execute_many_at_n3_w2_uses_sloppy_quorum_and_delivers_hints(
    cluster: Cluster,
) -> None:
    nodes = await cluster.start_ready(ADDRS[:4])
    a = nodes[0]
    down = nodes[1].address
    for other in ADDRS[:4]:
        if other != down:
            cluster.network.cut(down, other)
    items = [(f"k{i}".encode(), b"v%d" % i) for i in range(40)]
    hit = [k for k, _ in items if down in a.preference_list(k, 3)]
    assert hit, "some keys must be replicated on the down node"
    results = await a.execute_many("t", PUT, items, replication=3, quorum=2)
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    # each key of the down replica was answered by a substitute holding a hint for it
    by_key = {r.key: r for r in results}
    for key in hit:
        replies = await by_key[key].all_replies()
        assert down not in {r.node for r in replies if r.ok}
        assert len([r for r in replies if r.ok]) == 3
    pending = sum(
        n.sync_status()["hints"]["pending"].get(down, 0) for n in nodes if n.address != down
    )
    assert pending == len(hit)
    assert not any(k in cluster.apps[down].data for k in hit)
    cluster.network.heal()
    await cluster.until(lambda: all(cluster.apps[down].data.get(k) == dict(items)[k] for k in hit))


async def test_execute_many_of_an_unhinted_mutation_fails_per_key_when_replicas_are_down(
    cluster: Cluster,
) -> None:
    nodes = await cluster.start_ready(ADDRS[:4])
    a = nodes[0]
    for other in ADDRS[1:4]:
        cluster.network.cut(a.address, other)
    items = [(f"k{i}".encode(), b"") for i in range(20)]
    results = await a.execute_many("t", BUMP, items, replication=3, quorum=2, timeout=0.5)
    assert not any(r.ok for r in results)
    assert all(isinstance(r.error, QuorumNotReachedError) for r in results)
    assert all(c.sync_status()["hints"]["pending_total"] == 0 for c in nodes)


# -- send --------------------------------------------------------------------------------------


async def test_send_is_fire_and_forget_and_counts_failures(cluster: Cluster) -> None:
    a, b, c = await cluster.start_ready(ADDRS[:3])
    key = b"counter"
    result = a.send("t", BUMP, key, replication=3)
    assert result is None
    await settle_loop(20)
    assert all(cluster.apps[x.address].bumps[key] == 1 for x in (a, b, c))
    assert (a.address, True) in cluster.apps[a.address].sources
    a.send("t", BUMP, key, nodes=[b.address])
    await settle_loop(20)
    assert cluster.apps[b.address].bumps[key] == 2 and cluster.apps[c.address].bumps[key] == 1
    cluster.network.cut(a.address, c.address)
    a.send("t", BUMP, key, nodes=[c.address])
    a.send("t", "unknown", key, nodes=[b.address])
    await cluster.until(lambda: a.sync_status()["send"]["failed"] == 2)
    await a.stop()
    a.send("t", BUMP, key)  # never raises for delivery; a stopped node drops it
    assert a.sync_status()["send"]["failed"] == 3


async def test_call_requires_a_running_node(cluster: Cluster) -> None:
    (a,) = await cluster.start_ready(ADDRS[:1])
    await a.stop()
    with pytest.raises(NotRunningError):
        await a.call(a.address, "t", GET, b"k")
    with pytest.raises(NotRunningError):
        await a.execute_many("t", GET, [(b"k", b"")])


# -- ownership --------------------------------------------------------------------------------


async def test_ownership_listener_sees_start_and_ring_changes(cluster: Cluster) -> None:
    changes: list[OwnershipChange] = []
    discovery = FixedDiscovery(ADDRS[0], ADDRS[:1])
    a = await cluster.start(ADDRS[0], ADDRS[:1], discovery)
    a.add_ownership_listener(changes.append)  # added to a running node: told at once
    assert len(changes) == 1
    assert changes[0].gained == frozenset(range(P)) == changes[0].primary_gained
    assert not changes[0].lost and changes[0].ring == a.ring
    # the other nodes join: a keeps replicating only its share
    for addr in ADDRS[1:4]:
        await cluster.start(addr, ADDRS[:4])
    discovery.set_members(ADDRS[:4])
    await cluster.until(lambda: len(a.ring) == 4)
    owned = a.ring.partitions_of(a.address, 3)
    lost = frozenset().union(*(c.lost for c in changes))
    assert lost == frozenset(range(P)) - owned
    assert frozenset().union(*(c.primary_lost for c in changes)) == frozenset(range(P)) - (
        a.ring.partitions_of(a.address, 1)
    )
    assert changes[-1].ring == a.ring
    for partition in range(P):
        assert a.partition_for_key(f"k{partition}") == a.ring.partition_for_key(f"k{partition}")


async def test_ownership_listener_registered_before_start_is_called_at_start(
    cluster: Cluster,
) -> None:
    changes: list[OwnershipChange] = []
    node = PeerRing(
        FixedDiscovery(ADDRS[0], ADDRS[:3]),
        config=cluster.config,
        transport=cluster.network.transport(ADDRS[0]),
        clock=cluster.clock,
    )
    cluster.nodes[ADDRS[0]] = node

    def broken(change: OwnershipChange) -> None:
        raise RuntimeError("listener bug")

    node.add_ownership_listener(broken)  # logged and ignored: the next one still runs
    node.add_ownership_listener(changes.append)
    assert changes == []
    await node.start()
    assert len(changes) == 1
    assert changes[0].gained == node.ring.partitions_of(node.address, 3)


async def test_execute_many_forwards_reads_of_a_pulling_replica_per_key(
    cluster: Cluster,
) -> None:
    a, b, c = await cluster.start_ready(ADDRS[:3])
    items = [(f"k{i}".encode(), b"v%d" % i) for i in range(60)]
    assert all(r.ok for r in await a.execute_many("t", PUT, items, quorum=3))
    discovery = FixedDiscovery(ADDRS[3], ADDRS[:4])
    d = await cluster.start(ADDRS[3], ADDRS[:4], discovery)

    async def never(partitions: list[int]) -> None:  # hold D's pulls: it stays pending
        await asyncio.sleep(0)

    d._sync._pull_round = never  # type: ignore[method-assign]
    for node in (a, b, c):
        node._discovery.set_members(ADDRS[:4])  # type: ignore[attr-defined]
    await settle_loop(60)
    assert all(len(n.ring) == 4 for n in (a, b, c, d))
    moved = [k for k, _ in items if d.address in a.preference_list(k, 3)]
    assert moved and not any(d.partition_ready(a.partition_for_key(k)) for k in moved)
    reads = [(k, b"") for k, _ in items]
    op = asyncio.ensure_future(a.execute_many("t", GET, reads, quorum=3))
    await cluster.until(op.done, within=3.0)
    results = op.result()
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    for result, (key, value) in zip(results, items, strict=True):
        assert result.payloads[:3] == [value] * 3
        if key in moved:  # D refused "not ready"; a previous holder answered instead
            assert d.address not in {r.node for r in result.ok_replies}


async def test_execute_many_falls_back_to_single_requests_for_a_peer_without_batches(
    cluster: Cluster,
) -> None:
    a, b, _ = await cluster.start_ready(ADDRS[:3])
    transport = a.transport
    original = transport.request
    refused: list[str] = []

    def old_peer(peer: str, request: Request) -> asyncio.Future[Response]:
        if peer == b.address and request.namespace.startswith("__peer_ring_batch"):
            refused.append(peer)  # what a node of an older version answers
            fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
            fut.set_result(Response(Status.UNKNOWN_COMMAND, b"", "unknown command"))
            return fut
        return original(peer, request)

    transport.request = old_peer  # type: ignore[method-assign]
    items = [(f"k{i}".encode(), b"v%d" % i) for i in range(20)]
    results = await a.execute_many("t", PUT, items, quorum=3)
    assert refused == [b.address]
    assert all(r.ok for r in results)
    assert all(cluster.apps[b.address].data[k] == v for k, v in items)
