"""ZooKeeperDiscovery against a real ZooKeeper server: registration, removal, metadata,
watch snapshots, fail-fast configuration, a real PeerRing ring."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable

import pytest
from kazoo.client import KazooClient  # type: ignore[import-untyped]
from kazoo.exceptions import NoAuthError  # type: ignore[import-untyped]

from peer_ring.core import Member, PeerRing
from peer_ring.core.testing import free_port
from peer_ring.discovery.zookeeper import ZooKeeperDiscovery, ZooKeeperDiscoveryError

WAIT = 30.0  # upper bound of any wait (a shared 2-core machine), never a target


def addresses(members: frozenset[Member]) -> set[str]:
    return {m.address for m in members}


async def wait_for(predicate: Callable[[], bool], timeout: float = WAIT) -> float:
    """Poll every 10 ms (the awaited change happens in ZooKeeper); return seconds taken."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, f"condition not met within {timeout} s"
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def test_members_register_see_each_other_and_leave(make_discovery) -> None:
    a = make_discovery("127.0.0.1:7101", metadata={"zone": "eu-1a"})
    b = make_discovery("127.0.0.1:7102")
    assert addresses(await a.start()) == {"127.0.0.1:7101"}
    seen: list[frozenset[Member]] = []

    async def collect() -> None:
        async for snapshot in a.watch():
            seen.append(snapshot)

    collector = asyncio.create_task(collect())
    started = await b.start()
    assert addresses(started) == {"127.0.0.1:7101", "127.0.0.1:7102"}
    # B reads A's metadata from A's znode.
    (a_seen_by_b,) = [m for m in started if m.address == "127.0.0.1:7101"]
    assert dict(a_seen_by_b.metadata) == {"zone": "eu-1a"}
    await wait_for(lambda: addresses(a.members) == {"127.0.0.1:7101", "127.0.0.1:7102"})

    await b.stop()  # closes the session: the znode goes at once, not after the timeout
    took = await wait_for(lambda: addresses(a.members) == {"127.0.0.1:7101"}, timeout=1.5)
    print(f"graceful stop seen by a peer after {took * 1000:.0f} ms")
    await a.stop()
    await asyncio.wait_for(collector, WAIT)  # watch() ends after stop()
    assert [addresses(s) for s in seen] == [
        {"127.0.0.1:7101", "127.0.0.1:7102"},
        {"127.0.0.1:7101"},
    ]
    assert not a.stale


async def test_start_is_idempotent_and_stop_ends_an_idle_watch(make_discovery) -> None:
    a = make_discovery("127.0.0.1:7101")
    first = await a.start()
    assert await a.start() == first
    watcher = asyncio.create_task(anext(a.watch(), None))
    await asyncio.sleep(0)
    await a.stop()
    await a.stop()
    assert await asyncio.wait_for(watcher, WAIT) is None
    with pytest.raises(ZooKeeperDiscoveryError, match="stopped"):
        await a.start()


async def test_unreachable_zookeeper_fails_start_fast(make_discovery) -> None:
    hosts = f"127.0.0.1:{free_port()}"  # nothing listens there
    d = make_discovery("127.0.0.1:7101", hosts=hosts, startup_timeout=1.0)
    start = time.monotonic()
    with pytest.raises(ZooKeeperDiscoveryError, match="unreachable") as info:
        await d.start()
    assert hosts in str(info.value)
    assert time.monotonic() - start < 10.0


async def test_a_cancelled_start_leaves_no_kazoo_thread_behind(make_discovery) -> None:
    def zk_threads() -> int:
        return sum("zk_loop" in t.name for t in threading.enumerate())

    before = zk_threads()
    d = make_discovery("127.0.0.1:7101", hosts=f"127.0.0.1:{free_port()}", startup_timeout=60)
    starting = asyncio.create_task(d.start())
    await wait_for(lambda: zk_threads() > before)  # kazoo is trying to connect
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    await wait_for(lambda: zk_threads() == before, timeout=5.0)


async def test_a_path_zookeeper_refuses_fails_start(make_discovery, zk_server, zk_path) -> None:
    # The parent of the path is an ephemeral znode, which cannot have children.
    client = KazooClient(hosts=zk_server.hosts)
    client.start(timeout=WAIT)
    try:
        client.create(zk_path, b"", ephemeral=True, makepath=True)
        d = make_discovery("127.0.0.1:7101", path=f"{zk_path}/members")
        with pytest.raises(ZooKeeperDiscoveryError, match="NoChildrenForEphemerals"):
            await d.start()
    finally:
        client.stop()
        client.close()


async def test_a_deleted_own_node_is_created_again(make_discovery, zk_server, zk_path) -> None:
    a = make_discovery("127.0.0.1:7101")
    b = make_discovery("127.0.0.1:7102")
    await a.start()
    await b.start()
    client = KazooClient(hosts=zk_server.hosts)
    client.start(timeout=WAIT)
    try:
        client.delete(f"{zk_path}/127.0.0.1:7102")  # an operator's mistake
        await wait_for(lambda: client.exists(f"{zk_path}/127.0.0.1:7102") is not None)
        stat = client.exists(f"{zk_path}/127.0.0.1:7102")
        assert stat.ephemeralOwner == b.session_id
    finally:
        client.stop()
        client.close()
    await wait_for(lambda: addresses(a.members) == {"127.0.0.1:7101", "127.0.0.1:7102"})


async def test_foreign_children_are_ignored(make_discovery, zk_server, zk_path) -> None:
    a = make_discovery("127.0.0.1:7101")
    await a.start()
    client = KazooClient(hosts=zk_server.hosts)
    client.start(timeout=WAIT)
    try:
        client.create(f"{zk_path}/lock-0001", b"x")  # not a host:port name
        client.create(f"{zk_path}/127.0.0.9:7101", b"not json")  # a member without metadata
        await wait_for(lambda: addresses(a.members) == {"127.0.0.1:7101", "127.0.0.9:7101"})
    finally:
        client.stop()
        client.close()


async def test_a_peer_ring_cluster_forms_over_zookeeper(zk_server, zk_path) -> None:
    port = free_port("127.0.0.1", "127.0.0.2")
    nodes = [
        PeerRing(
            ZooKeeperDiscovery(zk_server.hosts, f"127.0.0.{i}:{port}", path=zk_path),
        )
        for i in (1, 2)
    ]
    try:
        for node in nodes:
            await node.start()
        expected = {f"127.0.0.1:{port}", f"127.0.0.2:{port}"}
        for node in nodes:
            await wait_for(lambda n=node: set(n.members) == expected)  # type: ignore[misc]
    finally:
        for node in nodes:
            await node.stop()


async def test_digest_credentials_keep_strangers_out(make_discovery, zk_server) -> None:
    # A top-level folder of its own: with credentials, discovery creates every missing
    # folder of its path with the "creator all" ACL, which would lock the other tests out
    # of a shared parent (they run in any order).
    zk_path = f"/peer-ring-digest-tests-{uuid.uuid4().hex[:12]}/members"
    a = make_discovery("127.0.0.1:7101", digest="peers:s3cret", path=zk_path)
    b = make_discovery("127.0.0.1:7102", digest="peers:s3cret", path=zk_path)
    await a.start()
    assert addresses(await b.start()) == {"127.0.0.1:7101", "127.0.0.1:7102"}
    stranger = KazooClient(hosts=zk_server.hosts)
    stranger.start(timeout=WAIT)
    try:
        with pytest.raises(NoAuthError):
            stranger.get_children(zk_path)
        with pytest.raises(NoAuthError):
            stranger.create(f"{zk_path}/127.0.0.9:7101", b"", ephemeral=True)
    finally:
        stranger.stop()
        stranger.close()
    intruder = make_discovery("127.0.0.1:7103", digest="peers:wrong", path=zk_path)
    with pytest.raises(ZooKeeperDiscoveryError, match="NoAuth"):
        await intruder.start()
    assert addresses(a.members) == {"127.0.0.1:7101", "127.0.0.1:7102"}
