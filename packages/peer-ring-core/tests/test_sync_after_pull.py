"""A write refused while a replica pulls the partition reaches it right after the pull.

A replica still pulling a partition may refuse its writes (the KV store does). With 3
nodes and N=3 no other node stands in, so a write acknowledged by W=2 skips that replica;
if its pull had already passed the key, its copy is stale once the pull is over. The core
remembers the partitions that received writes while pulled and compares them with their
other replicas right after the pull (``_sync/_after_pull.py``), instead of leaving them to
the periodic anti-entropy (minutes). The periodic anti-entropy is effectively off here (an
hour), so only that comparison can bring the write.

The race itself (the pull passes the key, then the write lands, then the pull ends) is
produced by holding the restarted replica's pull rounds and then recording their outcome
in its partition table directly, as ``Puller.round`` does after its transfers: the pull's
I/O is not the subject here (``test_sync_cluster.py`` and ``test_sync_delta.py`` cover it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from peer_ring.core import (
    CommandContext,
    PartitionNotReadyError,
    PeerRing,
    PeerRingConfig,
)
from peer_ring.core._sync._after_pull import AfterPullRepairs
from peer_ring.core._sync._partitions import PullOutcome
from peer_ring.core.testing import (
    FakeClock,
    MemoryNetwork,
    VersionedDict,
    fake_time_config,
    free_port,
    versioned_payload,
)
from peer_ring.core.transport import TransportLimits

P = 32
ADDRS = [f"127.0.0.{i}:7101" for i in range(1, 4)]
#: Periodic anti-entropy every hour: never within these tests.
CONFIG = fake_time_config(P, anti_entropy_interval=3600.0)
KEY = b"refused-key"
PUT = VersionedDict.PUT


class RefusingDict(VersionedDict):
    """A versioned dict that refuses writes of partitions its node still pulls, as the KV
    store does (it cannot know which version it should refuse, so it must not count)."""

    node: PeerRing | None = None

    def put(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        node = self.node
        assert node is not None
        if not node.partition_ready(ctx.partition):
            raise PartitionNotReadyError(node.address, ctx.partition)
        return super().put(ctx, key, payload)


#: ``app_cluster(...)``: an ``AppCluster`` of conftest.py.
ClusterFactory = Callable[..., Any]


def refusing_nodes(
    app_cluster: ClusterFactory, addresses: list[str], config: PeerRingConfig, **kwargs: Any
) -> tuple[Any, dict[str, RefusingDict], Callable[[str], PeerRing]]:
    """The ``AppCluster`` (``kwargs`` go to ``app_cluster``; it stops every node after the
    test), each address's app (kept across restarts, as a store on disk), and
    ``start(address)`` making (not starting) a node of ``addresses`` with that app."""
    apps = {address: RefusingDict(P) for address in addresses}

    def app(node: PeerRing) -> RefusingDict:
        refusing = apps[node.address]
        refusing.node = node
        return refusing

    handlers = {PUT: RefusingDict.put, VersionedDict.GET: RefusingDict.get}
    cluster = app_cluster(config, app, handlers, namespace="app", hooks=True, **kwargs)
    return cluster, apps, lambda address: cluster.add(address, addresses)


async def hold_forever(partitions: list[int]) -> None:
    """A pull round that never ends (one returning at once would be restarted at once)."""
    await asyncio.get_running_loop().create_future()


def finish_pulls(node: PeerRing, now: float) -> None:
    """End every pending pull as ``Puller.round`` would after transfers that came before
    the write: synced, without it."""
    table = node._sync.table
    for partition in list(table.pending):
        table.pull_result(partition, PullOutcome.SYNCED, now)


async def refuse_one_write(
    start: Callable[[str], PeerRing], apps: dict[str, RefusingDict]
) -> PeerRing:
    """A, B, C (``apps``' addresses) hold ``KEY`` v1; C restarts with its data and its pulls
    held; ``KEY`` v2 is written with W=2 while C pulls (C refuses). Returns the new C."""
    addresses = list(apps)
    a, b, c = (start(address) for address in addresses)
    for node in (a, b, c):
        await node.start()
    await until(lambda: a.ready and b.ready and c.ready, a)
    await a.execute("app", PUT, KEY, versioned_payload(1, b"old"), quorum=3)
    assert all(app.data[KEY] == (1, b"old") for app in apps.values())
    # C restarts with the data it had (a store on disk); its initial sync makes every
    # partition pending, and its pull rounds are held.
    await c.stop()
    # A must see the old C go (its stream to it break) before the new C starts: else, on a
    # loaded machine, A may find that stream broken only after the check below, and the
    # write it sent on it never reaches C (a gRPC run failed that way).
    await until(lambda: addresses[2] in suspected(a), a)
    c = start(addresses[2])
    c._sync._pull_round = hold_forever  # type: ignore[method-assign]
    await c.start()
    partition = c.partition_for_key(KEY)
    assert not c.partition_ready(partition)
    # A's stream to the new C is up (it clears the suspicion, as does an answered probe)
    await until(lambda: addresses[2] not in suspected(a), a)
    result = await a.execute("app", PUT, KEY, versioned_payload(2, b"new"), quorum=2)
    assert {r.node for r in result.ok_replies} == set(addresses[:2])
    # C's copy of the request may still be on its way when W=2 is reached
    await until(lambda: c.sync_status()["anti_entropy"]["after_pull_noted"] == 1, c)
    assert apps[addresses[2]].data[KEY] == (1, b"old")  # refused: no node could stand in
    return c


def suspected(node: PeerRing) -> list[str]:
    """The peers ``node`` suspects."""
    return list(node.sync_status()["membership"]["suspected"])


async def until(predicate: Callable[[], bool], node: PeerRing, within: float = 30.0) -> None:
    """Poll ``predicate`` every 0.05 s of ``node``'s clock (fake or real) for ``within``:
    generous, as on real time a loaded machine may take seconds (not a timing assert)."""
    deadline = node.clock.monotonic() + within
    while not predicate():
        assert node.clock.monotonic() < deadline, f"condition not met within {within}s"
        await node.clock.sleep(0.05)


# -- the bookkeeping -------------------------------------------------------------------------


def test_partitions_noted_while_pulled_become_due_after_the_pull_once() -> None:
    repairs = AfterPullRepairs(delay=0.5, retry_after=5.0)
    repairs.note(1)
    repairs.note(1)  # several writes: one comparison
    repairs.note(2)
    assert len(repairs) == 2 and repairs.noted == 2
    assert repairs.pulled({1: None, 2: None}, {1, 2}, 10.0) == []  # still pulling
    assert repairs.pulled({2: None}, {1, 2}, 10.0) == [1]
    assert repairs.due(10.4, 10) == [] and repairs.next_due() == 10.5
    assert repairs.due(10.5, 10) == [1]
    assert len(repairs) == 1 and repairs.next_due() is None
    assert repairs.pulled({}, {1, 2}, 11.0) == [2]
    assert repairs.due(11.5, 10) == [2]
    assert len(repairs) == 0


def test_a_lost_partition_is_forgotten_and_a_failed_one_retried() -> None:
    repairs = AfterPullRepairs(delay=0.5, retry_after=5.0)
    for p in (1, 2, 3):
        repairs.note(p)
    # 3 was lost while pulled: it is handed off, not compared
    assert repairs.pulled({}, {1, 2}, 0.0) == [1, 2]
    assert repairs.due(1.0, 1) == [1]  # bounded per call
    repairs.failed([1], 1.0)
    assert repairs.due(1.0, 10) == [2]
    assert repairs.next_due() == 6.0 and repairs.due(5.9, 10) == []
    # pending again before the retry: compared after that pull instead
    repairs.note(1)
    assert repairs.next_due() is None and repairs.due(100.0, 10) == []
    repairs.failed([1], 1.0)  # a comparison of the old pull failing now changes nothing
    assert repairs.pulled({1: None}, {1}, 7.0) == []
    assert repairs.pulled({}, {1}, 7.0) == [1] and repairs.due(7.5, 10) == [1]
    assert len(repairs) == 0 and repairs.noted == 4


# -- in-memory cluster, fake clock ---------------------------------------------------------

#: The ``memory_nodes`` fixture: the network, each address's app, and ``start(address)``.
MemoryNodes = tuple[MemoryNetwork, dict[str, RefusingDict], Callable[[str], PeerRing]]


@pytest.fixture
def memory_nodes(clock: FakeClock, app_cluster: ClusterFactory) -> MemoryNodes:
    """``start(address)`` makes a node of ``ADDRS`` on one in-memory network and ``clock``,
    with that address's app (``fake_time`` tests)."""
    cluster, apps, start = refusing_nodes(app_cluster, ADDRS, CONFIG, clock=clock)
    return cluster.network, apps, start


@pytest.mark.fake_time
async def test_a_write_refused_while_pulling_reaches_the_replica_right_after_the_pull(
    clock: FakeClock, memory_nodes: MemoryNodes
) -> None:
    _, apps, start = memory_nodes
    c = await refuse_one_write(start, apps)
    pulled_at = clock.monotonic()
    finish_pulls(c, pulled_at)
    assert c.ready
    # Without the comparison after the pull the copy stays stale until the periodic
    # anti-entropy (an hour here); with it, within about a second.
    await until(lambda: c.sync_status()["anti_entropy"]["after_pull_compared"] == 1, c)
    assert apps[ADDRS[2]].data[KEY] == (2, b"new")
    assert clock.monotonic() - pulled_at < 2.0
    ae = c.sync_status()["anti_entropy"]
    assert ae["rounds"] == 0  # not the periodic anti-entropy
    assert ae["after_pull_compared"] == 1  # only the partition that refused a write
    assert ae["after_pull_repaired"] == 1
    assert ae["after_pull_records_received"] >= 1
    assert ae["after_pull_waiting"] == 0
    # a quorum read that asks only C and one other now finds the write either way
    read = await c.call(c.address, "app", "get", KEY)
    assert read == versioned_payload(2, b"new")


@pytest.mark.fake_time
async def test_a_comparison_that_fails_is_retried_until_it_reaches_a_replica(
    clock: FakeClock, memory_nodes: MemoryNodes
) -> None:
    network, apps, start = memory_nodes
    c = await refuse_one_write(start, apps)
    # C is cut off from both other replicas when its pull ends: nothing to compare with
    network.cut(ADDRS[2], ADDRS[0])
    network.cut(ADDRS[2], ADDRS[1])
    finish_pulls(c, clock.monotonic())
    await clock.sleep(2.5)  # the first attempt (0.5 s after the pull) failed
    ae = c.sync_status()["anti_entropy"]
    assert ae["after_pull_compared"] == 0 and ae["after_pull_waiting"] == 1
    assert apps[ADDRS[2]].data[KEY] == (1, b"old")
    network.heal()
    await until(lambda: c.sync_status()["anti_entropy"]["after_pull_compared"] == 1, c)
    assert apps[ADDRS[2]].data[KEY] == (2, b"new")
    ae = c.sync_status()["anti_entropy"]
    assert ae["after_pull_waiting"] == 0
    assert ae["rounds"] == 0


# -- real transports on loopback -----------------------------------------------------------


@pytest.fixture
def loopback_addresses() -> Iterator[list[str]]:
    hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    port = free_port(*hosts)
    yield [f"{h}:{port}" for h in hosts]


async def test_over_a_real_transport_the_refused_write_arrives_right_after_the_pull(
    transport_kind: str, loopback_addresses: list[str], app_cluster: ClusterFactory
) -> None:
    addresses = loopback_addresses
    limits = TransportLimits(connect_timeout=1.0, backoff_max=0.2)
    config = replace(
        CONFIG,
        transport=transport_kind,
        transport_limits=limits,
        request_timeout=2.0,
        down_after=None,
    )
    _, apps, start = refusing_nodes(app_cluster, addresses, config, memory=False)
    c = await refuse_one_write(start, apps)
    finish_pulls(c, c.clock.monotonic())
    # The counters are updated once the comparison is over, after the records arrived.
    # No real-time bound on how soon: the periodic anti-entropy (an hour) cannot bring
    # the write within ``until``'s wait, only the comparison after the pull can.
    await until(lambda: c.sync_status()["anti_entropy"]["after_pull_compared"] == 1, c)
    assert apps[addresses[2]].data[KEY] == (2, b"new")
    assert c.sync_status()["anti_entropy"]["rounds"] == 0
