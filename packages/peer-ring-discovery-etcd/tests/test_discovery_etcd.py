"""EtcdDiscovery against a real etcd: registration, list + watch, metadata, stop, start errors."""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import time

import pytest

from peer_ring.core import Member
from peer_ring.discovery.etcd import EtcdDiscovery, EtcdDiscoveryError


async def test_nodes_see_each_other_with_metadata(env) -> None:
    a = env.discovery(metadata={"zone": "a"})
    b = env.discovery(metadata={"zone": "b"})
    first = await a.start()
    assert env.addresses(first) == {a.self_address}
    rec = env.record(a)
    await b.start()
    await rec.wait_for({a.self_address, b.self_address})
    zones = {m.address: dict(m.metadata) for m in a.members}
    assert zones == {a.self_address: {"zone": "a"}, b.self_address: {"zone": "b"}}
    # b's start() listed a, which registered first.
    assert env.addresses(b.members) == {a.self_address, b.self_address}
    # Each key is attached to its node's lease, with the documented value.
    keys = await env.keys()
    assert set(keys) == {env.prefix + a.self_address, env.prefix + b.self_address}
    assert keys[env.prefix + a.self_address] == a.status().lease_id
    assert all(lease for lease in keys.values())
    assert not a.stale and a.status().registered


async def test_a_stopped_node_leaves_at_once(env) -> None:
    a = env.discovery()
    b = env.discovery()
    await a.start()
    rec = env.record(a)
    await b.start()
    await rec.wait_for({a.self_address, b.self_address})
    stopped = time.monotonic()
    await b.stop()  # revokes its lease
    seen = await rec.wait_for({a.self_address}, within=5)
    assert seen - stopped < 5
    assert env.prefix + b.self_address not in await env.keys()


async def test_watch_starts_after_the_listed_revision(env) -> None:
    # Keys written before start are in the listing; every later one arrives by the watch,
    # exactly once (the watch starts at the listed revision + 1, not at it).
    for port in (9001, 9002):
        await env.admin.put(f"{env.prefix}127.0.0.1:{port}".encode(), b"{}")
    a = env.discovery()
    initial = await a.start()
    assert env.addresses(initial) == {a.self_address, "127.0.0.1:9001", "127.0.0.1:9002"}
    rec = env.record(a)
    await env.admin.put(f"{env.prefix}127.0.0.1:9003".encode(), b"{}")
    await env.admin.delete(f"{env.prefix}127.0.0.1:9001".encode())
    await rec.wait_for({a.self_address, "127.0.0.1:9002", "127.0.0.1:9003"})
    # Foreign keys under the prefix are ignored.
    await env.admin.put(f"{env.prefix}not-an-address".encode(), b"{}")
    await env.admin.put(f"{env.prefix}127.0.0.1:9004".encode(), b"{}")
    await rec.wait_for({a.self_address, "127.0.0.1:9002", "127.0.0.1:9003", "127.0.0.1:9004"})
    assert all("not-an-address" not in env.addresses(s) for s in rec.snapshots)
    # No snapshot is yielded twice in a row.
    keys = [frozenset(env.addresses(s)) for s in rec.snapshots]
    assert all(x != y for x, y in itertools.pairwise(keys))
    assert a.status().watch.lists == 1  # no re-list was needed


async def test_metadata_change_is_a_new_snapshot(env) -> None:
    a = env.discovery()
    await a.start()
    rec = env.record(a)
    key = f"{env.prefix}127.0.0.1:9100".encode()
    await env.admin.put(key, json.dumps({"metadata": {"zone": "a"}}).encode())
    await rec.wait_for({a.self_address, "127.0.0.1:9100"})
    await env.admin.put(key, json.dumps({"metadata": {"zone": "b"}}).encode())

    def zone() -> str | None:
        last = {m.address: m for m in rec.snapshots[-1]} if rec.snapshots else {}
        member: Member | None = last.get("127.0.0.1:9100")
        return None if member is None else member.metadata.get("zone")

    await env.wait_until(lambda: zone() == "b", within=10)


async def test_this_node_is_always_in_its_own_view(env) -> None:
    a = env.discovery()
    await a.start()
    rec = env.record(a)
    await env.admin.put(f"{env.prefix}127.0.0.1:9200".encode(), b"{}")
    await rec.wait_for({a.self_address, "127.0.0.1:9200"})
    # Someone deletes our key under a live lease: we stay in our own view, and the key
    # is written again at once (the watch told the registration loop).
    await env.admin.delete(f"{env.prefix}{a.self_address}".encode())

    async def key_back() -> None:
        while env.prefix + a.self_address not in await env.keys():  # noqa: ASYNC110 - etcd state
            await asyncio.sleep(0.05)

    await asyncio.wait_for(key_back(), timeout=5)
    assert all(a.self_address in env.addresses(s) for s in rec.snapshots)
    assert a.status().registration.registrations == 1  # same lease, key restored


async def test_unreachable_etcd_fails_start_fast_with_a_clear_message(env) -> None:
    port = env.free_port()  # nothing listens there
    d = EtcdDiscovery(
        self_address="127.0.0.1:7100", endpoints=f"127.0.0.1:{port}", startup_timeout=1.5
    )
    started = time.monotonic()
    with pytest.raises(EtcdDiscoveryError, match=rf"no answer from etcd at 127.0.0.1:{port}"):
        await d.start()
    assert time.monotonic() - started < 10
    await d.stop()


async def test_member_change_latency(env) -> None:
    """Measures the time from a put to the snapshot showing it (reported, not asserted)."""
    a = env.discovery()
    await a.start()
    rec = env.record(a)
    expected = {a.self_address}
    latencies = []
    for i in range(100):
        # Alternately a member joins and leaves: both directions are measured.
        address = f"127.0.0.1:{10000 + i // 2}"
        key = f"{env.prefix}{address}".encode()
        started = time.monotonic()
        if i % 2 == 0:
            await env.admin.put(key, b"{}")
            expected = expected | {address}
        else:
            await env.admin.delete(key)
            expected = expected - {address}
        seen = await rec.wait_for(expected, within=10)
        latencies.append(seen - started)
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(f"\nmember change visible: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    assert p99 < 5.0  # generous correctness bound: the change arrives by the watch


async def test_a_start_cancelled_after_registering_still_revokes_on_stop(env) -> None:
    # `peer-ring-kv serve` cancels the node's start on SIGTERM; when that lands between the
    # registration and the first listing, stop() must still revoke the lease, or the key
    # stays listed (and the node counted) for a whole TTL.
    a = env.discovery()
    listing = asyncio.Event()

    async def stuck_listing() -> None:
        listing.set()
        await asyncio.Event().wait()  # an etcd that never answers the listing

    a._watcher.list_once = stuck_listing
    start = asyncio.create_task(a.start())
    await asyncio.wait_for(listing.wait(), timeout=20)
    assert set(await env.keys()) == {env.prefix + a.self_address}  # registered
    start.cancel()
    with pytest.raises(asyncio.CancelledError):
        await start
    await a.stop()
    assert await env.keys() == {}
