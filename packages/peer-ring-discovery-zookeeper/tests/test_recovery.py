"""Recovery against a real ZooKeeper: session expiry (server- and client-side), stalled and
killed member processes, ZooKeeper restarts with and without its data.

Timings are printed (``pytest -s``) and reported in the README; asserts only hold generous
correctness bounds (a shared 2-core machine), never the targets themselves.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable

import pytest
from kazoo.client import KazooClient  # type: ignore[import-untyped]
from kazoo.protocol.connection import _SESSION_EXPIRED  # type: ignore[import-untyped]

from peer_ring.core import Member
from peer_ring.discovery.zookeeper import ZooKeeperDiscovery
from peer_ring.discovery.zookeeper.testing import close_session

WAIT = 30.0  # upper bound of any wait, never a target
SESSION = 2.0  # the session timeout the tests request (conftest's default)
A, B, C = "127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"


def addresses(members: frozenset[Member]) -> set[str]:
    return {m.address for m in members}


async def wait_for(predicate: Callable[[], bool], timeout: float = WAIT) -> float:
    """Poll every 10 ms (the awaited change happens in another process); seconds taken."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, f"condition not met within {timeout} s"
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def owner(hosts: str, path: str) -> int | None:
    """The session owning an ephemeral znode (None when it does not exist)."""
    client = KazooClient(hosts=hosts)
    client.start(timeout=WAIT)
    try:
        stat = client.exists(path)
        return None if stat is None else int(stat.ephemeralOwner)
    finally:
        client.stop()
        client.close()


async def test_server_side_session_expiry_registers_again(make_discovery, zk_server) -> None:
    a = make_discovery(A)
    b = make_discovery(B)
    await a.start()
    await b.start()
    await wait_for(lambda: addresses(a.members) == {A, B})
    old = b.session_credentials()
    assert old is not None
    # Another client attaches to B's session and closes it: ZooKeeper deletes B's znode
    # and B's next reconnection is told the session expired.
    expired_at = time.monotonic()
    await asyncio.to_thread(close_session, zk_server.hosts, *old)
    await wait_for(lambda: b.stats.expirations == 1)
    assert b.stale  # until the new session has registered and listed
    back = await wait_for(lambda: b.stats.registrations == 2 and not b.stale)
    seen = await wait_for(lambda: addresses(a.members) == {A, B})
    took = b.stats.last_reregistration_seconds
    assert took is not None and took < 5.0
    assert b.session_id not in (None, old[0])
    print(
        f"server-side expiry: re-registered {took * 1000:.0f} ms after LOST; "
        f"{(time.monotonic() - expired_at) * 1000:.0f} ms from the close to a peer seeing it "
        f"(waits {back:.2f}/{seen:.2f} s)"
    )
    assert addresses(b.members) == {A, B}


async def test_client_side_expiry_replaces_the_old_sessions_node(
    make_discovery, zk_server, zk_path
) -> None:
    # kazoo's own test trick: the client believes its session expired while the server
    # still holds it, so the old session's ephemeral znode is still there when the node
    # registers again (what a restarted process meets too).
    a = make_discovery(A)
    b = make_discovery(B)
    await a.start()
    await b.start()
    old_session = b.session_id
    client = b._zk._client  # the test reaches into kazoo on purpose
    client._call(_SESSION_EXPIRED, client.handler.async_result())
    await wait_for(lambda: b.stats.registrations == 2 and not b.stale)
    assert b.stats.replaced_nodes == 1
    new_owner = await asyncio.to_thread(owner, zk_server.hosts, f"{zk_path}/{B}")
    assert new_owner == b.session_id != old_session
    print(f"client-side expiry: re-registered in {b.stats.last_reregistration_seconds:.3f} s")
    # The old session's expiry, later, must not take the new znode with it.
    await asyncio.sleep(SESSION + 1.0)  # lets the old session time out on the server
    assert await asyncio.to_thread(owner, zk_server.hosts, f"{zk_path}/{B}") == b.session_id
    assert addresses(a.members) == {A, B}


@pytest.mark.slow
async def test_killed_member_is_removed_within_the_session_timeout(
    make_discovery, member_process
) -> None:
    a = make_discovery(A)
    await a.start()
    proc = member_process(B)
    await wait_for(lambda: addresses(a.members) == {A, B})
    killed_at = time.monotonic()
    proc.kill()  # SIGKILL: no session close, ZooKeeper must time the session out
    took = await wait_for(lambda: addresses(a.members) == {A})
    assert time.monotonic() - killed_at == pytest.approx(took, abs=0.05)
    print(f"kill -9: removed after {took:.2f} s (session timeout {SESSION} s)")
    assert SESSION * 0.5 < took < SESSION + 3.0


@pytest.mark.slow
async def test_killed_and_restarted_member_takes_its_node_back(
    make_discovery, member_process, zk_server, zk_path
) -> None:
    a = make_discovery(A)
    await a.start()
    first = member_process(B)
    await wait_for(lambda: addresses(a.members) == {A, B})
    old_owner = await asyncio.to_thread(owner, zk_server.hosts, f"{zk_path}/{B}")
    first.kill()
    first.wait()
    member_process(B)  # at once: the old session is still alive on the server
    new_owner = await asyncio.to_thread(owner, zk_server.hosts, f"{zk_path}/{B}")
    assert new_owner not in (None, old_owner)
    # Well past the old session's timeout: its expiry removed nothing.
    await asyncio.sleep(SESSION + 1.0)
    assert addresses(a.members) == {A, B}
    assert await asyncio.to_thread(owner, zk_server.hosts, f"{zk_path}/{B}") == new_owner


@pytest.mark.slow
async def test_stalled_member_expires_then_registers_again(make_discovery, member_process) -> None:
    a = make_discovery(A)
    await a.start()
    proc = member_process(B)
    await wait_for(lambda: addresses(a.members) == {A, B})
    os.kill(proc.pid, signal.SIGSTOP)  # a stalled process: GC pause, VM freeze...
    try:
        gone = await wait_for(lambda: addresses(a.members) == {A})
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    resumed_at = time.monotonic()
    back = await wait_for(lambda: addresses(a.members) == {A, B})
    print(
        f"SIGSTOP: removed after {gone:.2f} s; after SIGCONT, seen again in "
        f"{back * 1000:.0f} ms (expiry noticed, new session, znode, peer's watch)"
    )
    assert gone < SESSION + 3.0
    assert time.monotonic() - resumed_at < 10.0


@pytest.mark.slow
async def test_zookeeper_restart_keeps_the_view_stale_then_fresh(own_zk_server, zk_path) -> None:
    made = [
        ZooKeeperDiscovery(own_zk_server.hosts, x, path=zk_path, session_timeout=SESSION)
        for x in (A, B)
    ]
    a, b = made
    try:
        await a.start()
        await b.start()
        await wait_for(lambda: addresses(a.members) == {A, B})
        snapshots: list[set[str]] = []

        async def collect() -> None:
            async for snapshot in a.watch():
                snapshots.append(addresses(snapshot))

        collector = asyncio.create_task(collect())
        own_zk_server.stop()
        await wait_for(lambda: a.stale and b.stale)
        assert not a.connected
        await asyncio.sleep(SESSION)  # an outage longer than the session timeout
        assert addresses(a.members) == {A, B}  # kept: no departure reported while down
        restarted_at = time.monotonic()
        own_zk_server.start()
        fresh = await wait_for(lambda: not a.stale and not b.stale)
        print(
            f"ZooKeeper restart: views fresh {fresh:.2f} s after the server answered again "
            f"(start took {time.monotonic() - restarted_at - fresh:.2f} s); "
            f"expirations a={a.stats.expirations} b={b.stats.expirations}"
        )
        assert addresses(a.members) == {A, B}
        assert a.stats.suspensions >= 1
        c = ZooKeeperDiscovery(own_zk_server.hosts, C, path=zk_path)
        made.append(c)
        await c.start()
        await wait_for(lambda: addresses(a.members) == {A, B, C})
        await a.stop()
        await asyncio.wait_for(collector, WAIT)
        # The member set never shrank through the outage.
        assert all({A, B} <= s for s in snapshots), snapshots
    finally:
        for d in made:
            await d.stop()


@pytest.mark.slow
async def test_zookeeper_restart_without_data_registers_everyone_again(
    own_zk_server, zk_path
) -> None:
    made = [
        ZooKeeperDiscovery(own_zk_server.hosts, x, path=zk_path, session_timeout=SESSION)
        for x in (A, B)
    ]
    a, b = made
    try:
        await a.start()
        await b.start()
        await wait_for(lambda: addresses(a.members) == {A, B})
        own_zk_server.stop()
        own_zk_server.wipe()  # every session and znode, the path included, is gone
        own_zk_server.start()
        took = await wait_for(lambda: all(d.stats.registrations == 2 and not d.stale for d in made))
        await wait_for(lambda: addresses(a.members) == addresses(b.members) == {A, B})
        print(f"ZooKeeper restart without data: both registered again in {took:.2f} s")
        assert a.stats.expirations == b.stats.expirations == 1
    finally:
        for d in made:
            await d.stop()


async def test_stop_while_zookeeper_is_down_is_quick(own_zk_server, zk_path) -> None:
    a = ZooKeeperDiscovery(own_zk_server.hosts, A, path=zk_path, session_timeout=SESSION)
    await a.start()
    own_zk_server.kill()
    await wait_for(lambda: a.stale)
    started = time.monotonic()
    await a.stop()
    took = time.monotonic() - started
    print(f"stop() with ZooKeeper down took {took * 1000:.0f} ms")
    assert took < 10.0
