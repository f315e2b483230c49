"""A node's lifecycle edges: a discovery that fails, repeated start/stop, ``async with``,
and the transfers it serves (chunking, unknown namespaces, partitions out of range)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator, Sequence

import pytest

from peer_ring.core import (
    DIGEST_BUCKETS,
    InvalidArgumentError,
    NotRunningError,
    PeerRing,
    PeerRingConfig,
    UnknownCommandError,
)
from peer_ring.core._types import Member
from peer_ring.core.testing import FakeClock, FixedDiscovery, MemoryNetwork

pytestmark = pytest.mark.fake_time

A, B = "a:1", "b:1"
CONFIG = PeerRingConfig(partitions=4, replication=1, anti_entropy_interval=None)


def echo(ctx: object, key: bytes, payload: bytes) -> bytes:
    return payload


class BrokenStart(FixedDiscovery):
    async def start(self) -> frozenset[Member]:
        raise ConnectionError("discovery backend unreachable")


class RegistersThenHangs(FixedDiscovery):
    """Registers (as etcd discovery puts its key on a lease), then waits: a slow join."""

    def __init__(self, address: str, peers: Sequence[str]) -> None:
        super().__init__(address, peers)
        self.registered = asyncio.Event()
        self.released = False

    async def start(self) -> frozenset[Member]:
        self.registered.set()
        await asyncio.Event().wait()  # never set: only a cancellation ends the start
        raise AssertionError("unreachable")

    async def stop(self) -> None:
        self.released = True
        await super().stop()


class BrokenWatch(FixedDiscovery):
    async def watch(self) -> AsyncIterator[frozenset[Member]]:
        yield frozenset({Member(self.self_address)})
        raise RuntimeError("watch stream broke")


def make(net: MemoryNetwork, clock: FakeClock, discovery: FixedDiscovery) -> PeerRing:
    node = PeerRing(
        discovery, config=CONFIG, transport=net.transport(discovery.self_address), clock=clock
    )
    node.register("t", "echo", echo)
    return node


async def test_a_discovery_that_fails_to_start_releases_the_address(loop_clock: FakeClock) -> None:
    net = MemoryNetwork(loop_clock)
    node = make(net, loop_clock, BrokenStart(A, [A]))
    with pytest.raises(ConnectionError, match="discovery backend unreachable"):
        await node.start()
    assert not node.running
    with pytest.raises(NotRunningError):
        await node.wait_ready(1.0)
    # The transport was closed: a new node can bind the same address at once.
    again = make(net, loop_clock, FixedDiscovery(A, [A]))
    async with again:
        assert await again.call(A, "t", "echo", b"k", b"up") == b"up"


async def test_a_start_cancelled_while_joining_stops_the_discovery(loop_clock: FakeClock) -> None:
    # SIGTERM while a node joins cancels start() inside discovery.start(), after the
    # discovery registered this node; node.stop() does nothing (the node never ran), so
    # start() itself must release the registration, or an etcd key outlives the node.
    net = MemoryNetwork(loop_clock)
    discovery = RegistersThenHangs(A, [A])
    node = make(net, loop_clock, discovery)
    starting = asyncio.create_task(node.start())
    await discovery.registered.wait()
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert discovery.released
    assert not node.running
    # The transport was closed too: the address can be bound again at once.
    again = make(net, loop_clock, FixedDiscovery(A, [A]))
    async with again:
        assert await again.call(A, "t", "echo", b"k", b"up") == b"up"


async def test_a_broken_discovery_watch_is_logged_and_the_node_serves_on(
    loop_clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    net = MemoryNetwork(loop_clock)
    node = make(net, loop_clock, BrokenWatch(A, [A]))
    with caplog.at_level(logging.ERROR, logger="peer_ring.core._node"):
        async with node:
            await asyncio.sleep(1.0)
            assert node.running
            assert await node.call(A, "t", "echo", b"k", b"still") == b"still"
    frozen = [r for r in caplog.records if "member view frozen" in r.getMessage()]
    assert len(frozen) == 1 and frozen[0].exc_info is not None


async def test_start_and_stop_are_idempotent_and_async_with_stops_on_error(
    loop_clock: FakeClock,
) -> None:
    net = MemoryNetwork(loop_clock)
    node = make(net, loop_clock, FixedDiscovery(A, [A]))
    await node.start()
    await node.start()  # no second transport, no error
    await node.wait_ready()  # no timeout: returns once ready
    assert node.ready
    await node.stop()
    await node.stop()
    assert not node.running and not node.ready
    other = make(net, loop_clock, FixedDiscovery(B, [B]))
    with pytest.raises(KeyError):
        async with other:
            assert other.running
            raise KeyError("application failure")
    assert not other.running


class Records:
    """Data hooks exporting fixed records for every partition."""

    def __init__(self, records: list[bytes]) -> None:
        self.records = records

    def export_partition(self, partition: int, buckets: object = None) -> Iterator[bytes]:
        return iter(self.records)

    def apply_records(self, partition: int, records: Sequence[bytes]) -> None:
        return None

    def drop_partition(self, partition: int) -> None:
        return None

    def digest_partition(self, partition: int) -> Sequence[bytes]:
        return [b""] * DIGEST_BUCKETS


async def test_transfers_are_chunked_and_bad_requests_refused(loop_clock: FakeClock) -> None:
    net = MemoryNetwork(loop_clock)
    big = [bytes([i]) * (300 * 1024) for i in range(8)]  # 2.4 MiB in all
    a = make(net, loop_clock, FixedDiscovery(A, [A]))
    a.register_hooks("t", Records(big))
    b = make(net, loop_clock, FixedDiscovery(B, [B]))
    async with a, b:
        chunks = [chunk async for chunk in b.transfer(A, "t", 0)]
        # Chunks close once they reach 1 MiB: 4 records (1.2 MiB), 4, then nothing left.
        assert [len(c) for c in chunks] == [4, 4]
        assert [r for c in chunks for r in c] == big
        with pytest.raises(UnknownCommandError, match="no data hooks for namespace 'nope'"):
            async for _ in b.transfer(A, "nope", 0):
                pass
        for partition in (-1, CONFIG.partitions):
            with pytest.raises(InvalidArgumentError, match=f"partition {partition} out of range"):
                async for _ in b.transfer(A, "t", partition):
                    pass
        assert await b.call(A, "t", "echo", b"k", b"serving") == b"serving"
