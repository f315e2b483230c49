"""Coordinator edges: quorums larger than the cluster in ``execute_many``, ``send`` to a
coroutine handler on the node itself, and the sloppy quorum's substitute for a replica
that fails (and when there is none)."""

from __future__ import annotations

import asyncio

import pytest

from peer_ring.core import (
    Command,
    CommandContext,
    PeerRing,
    PeerRingConfig,
    QuorumNotReachedError,
)
from peer_ring.core.testing import FakeClock, FixedDiscovery, MemoryNetwork

pytestmark = pytest.mark.fake_time

PUT = Command("put", mutates=True)
CONFIG = PeerRingConfig(
    partitions=8,
    replication=2,
    quorum=2,
    request_timeout=1.0,
    anti_entropy_interval=None,
    down_after=None,
    handoff_delay=0.1,
)


class Store:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def put(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        self.data[key] = payload
        return b"ok"


async def cluster(
    net: MemoryNetwork, clock: FakeClock, addresses: list[str]
) -> tuple[list[PeerRing], dict[str, Store]]:
    nodes, stores = [], {}
    for address in addresses:
        node = PeerRing(
            FixedDiscovery(address, addresses),
            config=CONFIG,
            transport=net.transport(address),
            clock=clock,
        )
        stores[address] = Store()
        node.register("t", PUT, stores[address].put)
        await node.start()
        nodes.append(node)
    return nodes, stores


async def test_execute_many_with_a_quorum_larger_than_the_cluster(loop_clock: FakeClock) -> None:
    net = MemoryNetwork(loop_clock)
    (node,), stores = await cluster(net, loop_clock, ["a:1"])
    items = [(b"k%d" % i, b"v") for i in range(4)]
    results = await node.execute_many("t", PUT, items, replication=3, quorum=3)
    assert [r.key for r in results] == [k for k, _ in items]
    for result in results:
        assert isinstance(result.error, QuorumNotReachedError)
        assert "only 1 member(s) for quorum 3" in str(result.error)
    assert stores["a:1"].data == {}  # nothing ran: it could never reach its quorum
    assert node.sync_status()["quorum_failures"] == {"t": len(items)}
    await node.stop()


async def test_send_to_a_coroutine_handler_on_this_node_counts_its_failures(
    loop_clock: FakeClock,
) -> None:
    net = MemoryNetwork(loop_clock)
    node = PeerRing(
        FixedDiscovery("a:1", ["a:1"]),
        config=CONFIG,
        transport=net.transport("a:1"),
        clock=loop_clock,
    )
    ran: list[bytes] = []

    async def note(ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        await asyncio.sleep(0)
        if payload == b"bad":
            raise ValueError("refused")
        ran.append(payload)
        return b""

    node.register("t", "note", note)
    await node.start()
    node.send("t", "note", b"k", b"good", replication=1)
    node.send("t", "note", b"k", b"bad", replication=1)
    node.send("t", "note", b"k", b"nobody there", nodes=["z:9"])  # refused by the network
    await asyncio.sleep(0.1)
    assert ran == [b"good"]
    assert node.sync_status()["send"] == {"sent": 3, "failed": 2}
    await node.stop()
    node.send("t", "note", b"k", b"after stop", replication=1)  # dropped, counted, no error
    assert node.sync_status()["send"]["failed"] == 3


async def test_a_failing_replica_is_replaced_by_a_substitute_holding_a_hint(
    loop_clock: FakeClock,
) -> None:
    net = MemoryNetwork(loop_clock)
    addresses = ["a:1", "b:1", "c:1"]
    nodes, stores = await cluster(net, loop_clock, addresses)
    coordinator = nodes[0]
    # A key whose replicas are the coordinator and one other node; cut that one off.
    key = next(
        k for k in (b"key-%d" % i for i in range(100)) if coordinator.preference_list(k)[0] == "a:1"
    )
    replica = coordinator.preference_list(key)[1]
    (spare,) = set(addresses) - {"a:1", replica}
    net.cut("a:1", replica)
    result = await coordinator.execute("t", PUT, key, b"v")
    assert result.ok
    assert sorted(r.node for r in result.ok_replies) == sorted(["a:1", spare])
    # Kept there as a hint for the replica, not applied to the spare's own store.
    assert key not in stores[spare].data
    hints = {n.address: n.sync_status()["hints"] for n in nodes}
    assert hints[spare]["pending"] == {replica: 1}
    # With the spare cut too, no substitute is left: the quorum fails, naming the node
    # that failed (the replica, now suspected, is replaced by the spare at once).
    net.cut("a:1", spare)
    with pytest.raises(QuorumNotReachedError, match=f"1 succeeded.*failed replicas: {spare}"):
        await coordinator.execute("t", PUT, key, b"w")
    assert hints[spare]["stored"] == 1
    for node in nodes:
        await node.stop()
