"""Issue 23, round 6: what ``Coordinator.execute`` inlines keeps its meaning.

``execute`` computes the key's partition and preference list from the ring's own fields
(no ``Ring.partition_for_key`` / ``preference_list`` call), builds its ``ExecuteResult``
without the ``__init__`` call, finishes a result without ``_finish`` when nobody waits
for completion, and creates an operation's future on the loop it remembers from the
first operation after each start (``asyncio.get_running_loop`` is a system call per call
on Python 3.11). None of this may show to an application.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from peer_ring.core import (
    Command,
    CommandContext,
    ExecuteResult,
    PeerRing,
    PeerRingConfig,
    Reply,
)
from peer_ring.core._sync._partitions import _Pull
from peer_ring.core.testing import (
    FixedDiscovery,
    MemoryCluster,
    MemoryNetwork,
    VersionedDict,
    versioned_payload,
)

ADDRS = [f"127.0.0.{i}:7601" for i in range(1, 4)]
PUT = Command("put", mutates=True)
GET = Command("get", reads=True)

#: ``app_cluster(...)``: an ``AppCluster`` of conftest.py.
ClusterFactory = Callable[..., Any]
#: ``memory_config(partitions, replication)`` of conftest.py.
ConfigFactory = Callable[[int, int], PeerRingConfig]


class Store:
    def __init__(self, address: str) -> None:
        self.address = address
        self.data: dict[bytes, bytes] = {}

    def put(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        self.data[key] = payload
        return b"ok:" + self.address.encode()

    def get(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        return self.data.get(key, b"")


def _fields(result: ExecuteResult) -> dict[str, Any]:
    return {name: getattr(result, name) for name in ExecuteResult.__slots__}


async def test_execute_results_have_every_field_of_a_constructed_one(
    app_cluster: ClusterFactory, memory_config: ConfigFactory
) -> None:
    cluster = app_cluster(
        memory_config(16, 3), lambda node: Store(node.address), {PUT: Store.put, GET: Store.get}
    )
    ring_nodes = await cluster.start_ready(ADDRS)
    node = ring_nodes[0]
    for i in range(24):
        key = f"key-{i}".encode()
        partition = node.partition_for_key(key)
        for n, q in ((1, 1), (2, 2), (3, 2), (3, 3)):
            prefs = node.preference_list(key, n)
            result = await node.execute("t", PUT, key, b"v", replication=n, quorum=q)
            expected = ExecuteResult(partition, prefs, key)
            fields = _fields(result)
            # The same fields as the constructor gives (every slot set), with the replies
            # received so far (at least the quorum) and the completion state they imply.
            assert fields["key"] == key
            assert fields["partition"] == partition
            assert fields["preference_list"] == prefs
            assert fields["error"] is None
            assert fields["_callbacks"] is None
            assert set(fields) == set(_fields(expected))
            assert len(result.replies) >= q
            assert all(r.ok and r.payload.startswith(b"ok:") for r in result.replies)
            replies = await result.all_replies()
            assert sorted(r.node for r in replies) == sorted(prefs)
            assert result.complete
            read = await node.execute("t", GET, key, replication=n, quorum=q)
            assert read.payloads[0] == b"v"


async def test_a_string_key_gives_the_same_partition_and_replicas(
    app_cluster: ClusterFactory, memory_config: ConfigFactory
) -> None:
    cluster = app_cluster(
        memory_config(16, 2), lambda node: Store(node.address), {PUT: Store.put, GET: Store.get}
    )
    node = (await cluster.start_ready(ADDRS))[1]
    result = await node.execute("t", PUT, "clé", b"v")
    assert result.key == "clé".encode()
    assert result.partition == node.partition_for_key("clé".encode())
    assert result.preference_list == node.preference_list("clé".encode(), 2)


async def test_completion_callbacks_registered_before_the_last_reply_still_run(
    app_cluster: ClusterFactory, memory_config: ConfigFactory
) -> None:
    cluster = app_cluster(
        memory_config(16, 3), lambda node: Store(node.address), {PUT: Store.put, GET: Store.get}
    )
    node = (await cluster.start_ready(ADDRS))[0]
    seen: list[list[Reply]] = []
    completed = 0
    for i in range(20):
        # Quorum 1 returns on the first reply: the callback is registered while the other
        # replies are still on their way (the inline finish must then call _finish).
        result = await node.execute("t", PUT, f"k{i}".encode(), b"v", quorum=1)
        if not result.complete:
            result.on_complete(seen.append)
        else:
            completed += 1
        await asyncio.wait_for(result.all_replies(), 5.0)
    assert len(seen) + completed == 20
    assert seen, "no operation returned before its last reply"
    assert all(len(replies) == 3 for replies in seen)


def test_a_node_started_again_under_another_event_loop_creates_its_futures_there() -> None:
    net = MemoryNetwork()
    config = PeerRingConfig(partitions=8, replication=2, quorum=2, anti_entropy_interval=None)
    nodes = [
        PeerRing(FixedDiscovery(a, ADDRS[:2]), config=config, transport=net.transport(a))
        for a in ADDRS[:2]
    ]
    stores = [Store(n.address) for n in nodes]
    for n, s in zip(nodes, stores, strict=True):
        n.register("t", PUT, s.put)

    async def run_once() -> asyncio.AbstractEventLoop | None:
        for n in nodes:
            await n.start()
        try:
            await asyncio.gather(*(n.wait_ready(5.0) for n in nodes))
            result = await nodes[0].execute("t", PUT, b"k", b"v")
            assert len(result.replies) == 2
            return nodes[0]._coord.loop
        finally:
            for n in nodes:
                await n.stop()
            assert nodes[0]._coord.loop is None  # forgotten on stop

    loops: list[asyncio.AbstractEventLoop] = []
    for _ in range(2):
        loop = asyncio.new_event_loop()
        try:
            remembered = loop.run_until_complete(run_once())
            assert remembered is loop
            loops.append(loop)
        finally:
            loop.close()
    assert loops[0] is not loops[1]


# -- the sync checks the dispatcher makes inline (SyncManager.table) ----------------------


async def test_a_write_this_node_neither_replicates_nor_holds_is_held_for_handoff(
    app_cluster: ClusterFactory, memory_config: ConfigFactory
) -> None:
    cluster = app_cluster(
        memory_config(16, 1), lambda node: Store(node.address), {PUT: Store.put, GET: Store.get}
    )
    ring_nodes = await cluster.start_ready(ADDRS)
    target = ring_nodes[2]
    foreign = [
        k
        for k in (f"s{i}".encode() for i in range(200))
        if target.address not in target.preference_list(k, 1)
    ]
    owned = [k for k in (f"o{i}".encode() for i in range(200)) if target.is_replica(k, 1)]
    assert foreign and owned

    def partitions() -> dict[str, int]:
        status: dict[str, int] = target.sync_status()["partitions"]
        return status

    before = partitions()
    # Writes of partitions the node replicates: nothing to note (the inline check).
    for key in owned[:5]:
        await ring_nodes[0].call(target.address, "t", PUT, key, b"v")
    assert partitions()["stray"] == before["stray"]
    assert partitions()["held_for_handoff"] == before["held_for_handoff"]
    # A write sent straight to a node that does not replicate its partition (a coordinator
    # with another ring view): the node holds the partition to hand it off.
    key = foreign[0]
    await ring_nodes[0].call(target.address, "t", PUT, key, b"v")
    after = partitions()
    assert after["stray"] == before["stray"] + 1
    assert after["held_for_handoff"] == before["held_for_handoff"] + 1
    # A second write of the same partition: already held, nothing new.
    await ring_nodes[0].call(target.address, "t", PUT, key, b"w")
    assert partitions()["stray"] == after["stray"]


@pytest.mark.fake_time
async def test_a_quorum_read_does_not_ask_this_node_while_it_pulls_the_partition(
    harness: MemoryCluster, count_requests: Callable[[PeerRing], Counter[str]]
) -> None:
    harness.config = dataclasses.replace(harness.config, replication=3)
    a, _, _ = await harness.start_ready(ADDRS)
    key = next(
        k
        for k in (f"key:{i}".encode() for i in range(10_000))
        if a.preference_list(k, 3)[0] == a.address
    )
    prefs = a.preference_list(key, 3)
    await a.execute("app", VersionedDict.PUT, key, versioned_payload(1, b"v"), quorum=3)
    sent = count_requests(a)
    await a.execute("app", VersionedDict.GET, key)
    assert sent == Counter({prefs[1]: 1})  # readable here: this node and one other
    # The partition is being pulled here (a pull that is never due, removed right after).
    pending = a._sync.table.pending
    pending[a.partition_for_key(key)] = _Pull(0.0, float("inf"), ())
    try:
        sent.clear()
        started = harness.clock.monotonic()
        result = await a.execute("app", VersionedDict.GET, key)
        waited = harness.clock.monotonic() - started
    finally:
        del pending[a.partition_for_key(key)]
    assert sent == Counter({prefs[1]: 1, prefs[2]: 1})  # the two other replicas instead
    # Asked at once: no local run that waits for the pull, is refused and retried.
    assert waited == 0.0
    assert a.sync_status()["reads"] == {"speculative": 0, "retried": 0}
    assert sorted(r.node for r in result.ok_replies) == sorted(prefs[1:])
