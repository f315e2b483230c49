"""In-process clusters of 3 and 5 nodes over the in-memory network."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from peer_ring.core import (
    CommandContext,
    InvalidArgumentError,
    NotRunningError,
    PeerRing,
    PeerRingConfig,
    PeerUnavailableError,
    QuorumNotReachedError,
    RemoteError,
    RequestTimeoutError,
    UnknownCommandError,
)
from peer_ring.core.testing import FakeClock, FixedDiscovery, MemoryNetwork, settle_loop

CONFIG = PeerRingConfig(partitions=64, replication=3, request_timeout=1.0)


def addresses(n: int) -> list[str]:
    return [f"127.0.0.{i}:7101" for i in range(1, n + 1)]


class Store:
    """A tiny per-node store used as the application under test."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.calls = Counter[str]()

    def put(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        self.calls["put"] += 1
        self.data[key] = payload
        return b"ok"

    def get(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        self.calls["get"] += 1
        return self.data.get(key, b"")

    async def slow(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        await asyncio.sleep(0)
        return b"slow:" + payload

    def boom(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        raise RuntimeError("handler exploded")

    def bad_arg(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        raise InvalidArgumentError("payload must not be empty")


async def make_cluster(
    n: int, network: MemoryNetwork, clock: FakeClock, config: PeerRingConfig = CONFIG
) -> tuple[list[PeerRing], dict[str, Store]]:
    peers = addresses(n)
    nodes, stores = [], {}
    for address in peers:
        node = PeerRing(
            FixedDiscovery(address, peers),
            config=config,
            transport=network.transport(address),
            clock=clock,
        )
        store = Store()
        node.register("t", "put", store.put)
        node.register("t", "get", store.get)
        node.register("t", "slow", store.slow)
        node.register("t", "boom", store.boom)
        node.register("t", "bad", store.bad_arg)
        await node.start()
        nodes.append(node)
        stores[address] = store
    return nodes, stores


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def network(clock: FakeClock) -> MemoryNetwork:
    return MemoryNetwork(clock)


@pytest.mark.parametrize("size", [3, 5])
async def test_replicated_write_reaches_every_replica(
    size: int, network: MemoryNetwork, clock: FakeClock
) -> None:
    nodes, stores = await make_cluster(size, network, clock)
    for i in range(50):
        key = f"key-{i}".encode()
        coordinator = nodes[i % size]
        result = await coordinator.execute("t", "put", key, b"v%d" % i, replication=3, quorum=2)
        assert len(result.ok_replies) >= 2
        replies = await result.all_replies()
        assert sorted(r.node for r in replies) == sorted(result.preference_list)
        holders = {a for a, s in stores.items() if s.data.get(key) == b"v%d" % i}
        assert holders == set(coordinator.preference_list(key, 3))
    for node in nodes:
        await node.stop()


async def test_every_node_computes_the_same_owners(
    network: MemoryNetwork, clock: FakeClock
) -> None:
    nodes, _ = await make_cluster(5, network, clock)
    for i in range(200):
        lists = {node.preference_list(f"k{i}", 3) for node in nodes}
        assert len(lists) == 1
        (prefs,) = lists
        assert len(set(prefs)) == 3


async def test_read_after_quorum_write(network: MemoryNetwork, clock: FakeClock) -> None:
    nodes, _ = await make_cluster(3, network, clock)
    await nodes[0].execute("t", "put", b"user:1", b"alice", quorum=2)
    result = await nodes[2].execute("t", "get", b"user:1", quorum=2)
    assert b"alice" in result.payloads


async def test_async_handler(network: MemoryNetwork, clock: FakeClock) -> None:
    nodes, _ = await make_cluster(3, network, clock)
    result = await nodes[1].execute("t", "slow", b"k", b"x", quorum=3)
    assert result.payloads == [b"slow:x"] * 3


async def test_quorum_greater_than_replication_is_rejected(
    network: MemoryNetwork, clock: FakeClock
) -> None:
    nodes, _ = await make_cluster(3, network, clock)
    with pytest.raises(InvalidArgumentError, match=r"quorum \(4\) cannot be greater"):
        await nodes[0].execute("t", "put", b"k", b"v", replication=3, quorum=4)
    with pytest.raises(InvalidArgumentError):
        await nodes[0].execute("t", "put", b"k", b"v", replication=0)
    # the node keeps serving
    assert (await nodes[0].execute("t", "put", b"k", b"v", quorum=3)).complete


async def test_unknown_command_names_the_replicas(network: MemoryNetwork, clock: FakeClock) -> None:
    nodes, _ = await make_cluster(3, network, clock)
    with pytest.raises(QuorumNotReachedError) as info:
        await nodes[0].execute("nope", "cmd", b"k", b"", quorum=2)
    err = info.value
    assert err.quorum == 2
    assert all(isinstance(e, UnknownCommandError) for e in err.failures.values())
    assert set(err.failures) <= set(nodes[0].preference_list(b"k"))
    assert "unknown command nope/cmd" in str(err)
    with pytest.raises(UnknownCommandError):
        await nodes[0].call(nodes[1].address, "nope", "cmd")
    assert (await nodes[0].execute("t", "put", b"k", b"v")).ok_replies


async def test_handler_errors_are_typed(network: MemoryNetwork, clock: FakeClock) -> None:
    nodes, _ = await make_cluster(3, network, clock)
    with pytest.raises(QuorumNotReachedError, match="handler exploded"):
        await nodes[0].execute("t", "boom", b"k", quorum=1)
    remote = next(a for a in addresses(3) if a != nodes[0].address)
    with pytest.raises(RemoteError, match="handler exploded"):
        await nodes[0].call(remote, "t", "boom", b"k")
    with pytest.raises(InvalidArgumentError, match="must not be empty"):
        await nodes[0].call(remote, "t", "bad", b"k")


async def test_down_peer_fails_fast_with_a_clear_error(
    network: MemoryNetwork, clock: FakeClock
) -> None:
    nodes, _ = await make_cluster(3, network, clock)
    await nodes[2].stop()
    # quorum 2 of 3 still works with one node down
    key = next(
        f"k{i}" for i in range(1000) if nodes[2].address in nodes[0].preference_list(f"k{i}")
    )
    result = await nodes[0].execute("t", "put", key, b"v", quorum=2)
    assert len(result.ok_replies) == 2
    # quorum 3 fails, naming the dead replica, without waiting for any deadline
    with pytest.raises(QuorumNotReachedError) as info:
        await nodes[0].execute("t", "put", key, b"v", quorum=3)
    assert isinstance(info.value.failures[nodes[2].address], PeerUnavailableError)
    assert nodes[2].address in str(info.value)
    with pytest.raises(PeerUnavailableError):
        await nodes[0].call(nodes[2].address, "t", "get", b"k")


async def test_paused_peer_times_out_on_the_fake_clock(
    network: MemoryNetwork, clock: FakeClock
) -> None:
    nodes, _ = await make_cluster(3, network, clock)
    network.pause(nodes[1].address)
    op = asyncio.ensure_future(nodes[0].execute("t", "put", b"k", b"v", quorum=3, timeout=1.0))
    await settle_loop()
    assert not op.done()
    await clock.advance_async(1.0)
    with pytest.raises(QuorumNotReachedError) as info:
        await op
    assert isinstance(info.value.failures[nodes[1].address], RequestTimeoutError)
    # quorum 2 succeeds without the paused node, and late completion is still reported
    result = await nodes[0].execute("t", "put", b"k", b"v", quorum=2, timeout=1.0)
    assert not result.complete
    await clock.advance_async(1.0)
    assert result.complete
    network.resume(nodes[1].address)
    assert (await nodes[0].execute("t", "put", b"k", b"v", quorum=3)).complete


async def test_partitioned_peer_is_suspected_then_cleared(
    network: MemoryNetwork, clock: FakeClock
) -> None:
    nodes, _ = await make_cluster(3, network, clock)
    a, b = nodes[0].address, nodes[1].address
    network.cut(a, b)
    assert nodes[0].membership.is_suspected(b)
    network.heal(a, b)
    assert not nodes[0].membership.is_suspected(b)


async def test_single_node_cannot_meet_quorum_two(network: MemoryNetwork, clock: FakeClock) -> None:
    nodes, _ = await make_cluster(1, network, clock)
    with pytest.raises(QuorumNotReachedError, match="only 1 member"):
        await nodes[0].execute("t", "put", b"k", b"v", replication=3, quorum=2)
    assert (await nodes[0].execute("t", "put", b"k", b"v", replication=3, quorum=1)).ok_replies


async def test_not_running(network: MemoryNetwork, clock: FakeClock) -> None:
    node = PeerRing(
        FixedDiscovery("127.0.0.1:7101", ["127.0.0.1:7101"]),
        config=CONFIG,
        transport=network.transport("127.0.0.1:7101"),
        clock=clock,
    )
    with pytest.raises(NotRunningError):
        await node.execute("t", "put", b"k")


async def test_membership_change_rebuilds_the_ring(
    network: MemoryNetwork, clock: FakeClock
) -> None:
    peers = addresses(4)
    disc = FixedDiscovery(peers[0], peers[:3])
    node = PeerRing(disc, config=CONFIG, transport=network.transport(peers[0]), clock=clock)
    changes: list[tuple[int, int]] = []
    node.add_ring_listener(lambda old, new: changes.append((len(old), len(new))))
    await node.start()
    assert len(node.ring) == 3
    disc.set_members(peers)
    await settle_loop()
    assert len(node.ring) == 4
    assert changes == [(1, 3), (3, 4)]
    await node.stop()


async def test_many_in_flight_from_every_node(network: MemoryNetwork, clock: FakeClock) -> None:
    nodes, stores = await make_cluster(3, network, clock)
    for in_flight in (64, 256):
        ops = [
            node.execute("t", "put", f"{node.address}-{i}", f"{i}".encode(), quorum=2)
            for node in nodes
            for i in range(in_flight)
        ]
        results = await asyncio.gather(*ops)
        # Every write reached its quorum (W=2), and from replicas of its own key.
        for result in results:
            assert result.ok and len(result.ok_replies) >= 2, result
            assert {r.node for r in result.ok_replies} <= set(result.preference_list)
    await settle_loop()
    for node in nodes:
        for i in range(256):
            key = f"{node.address}-{i}".encode()
            owners = node.preference_list(key)
            assert all(stores[o].data[key] == f"{i}".encode() for o in owners)
