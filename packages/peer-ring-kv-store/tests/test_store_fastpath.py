"""The store's get/set fast paths change nothing a user or a replica can see.

A write's local replica takes the record it was handed instead of decoding its payload;
replicas answer GETs from the stored bytes; the coordinator decodes identical answers once
and read repair skips replies equal to the winner's bytes. These tests check the results
against what the slow paths would give: identical records on every replica, stale replicas
still repaired, malformed payloads still refused. On the in-memory network and on real TCP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from peer_ring.core import CommandContext, PeerRingConfig
from peer_ring.core.testing import free_port, settle_loop
from peer_ring.discovery.static import StaticDiscovery
from peer_ring.kv import KVStore
from peer_ring.kv._record import Record
from peer_ring.kv._versions import Version
from peer_ring.kv._wire import MalformedPayloadError, encode_record

PEERS = [f"127.0.0.{i}:7501" for i in range(1, 4)]
CONFIG = PeerRingConfig(partitions=32, request_timeout=1.0)


@pytest.fixture
async def cluster(start_stores: Callable[..., Awaitable[list[KVStore]]]) -> list[KVStore]:
    return await start_stores(PEERS, config=CONFIG, replication=3)


def records(stores: list[KVStore], key: bytes) -> list[Record | None]:
    return [s.engine.get_record(key) for s in stores]


async def test_every_replica_stores_the_record_the_coordinator_built(
    cluster: list[KVStore],
) -> None:
    a, _, _ = cluster
    await a.set("raw", b"\x00bytes", quorum=3)
    # set() encodes raw bytes without TTL inline: the record _payload()/encode_record give.
    raw = records(cluster, b"raw")
    assert raw[0] is not None and raw == [raw[0]] * 3
    assert raw[0] == Record(b"\x00bytes", raw[0].version, 0.0, False, False)
    assert raw[0].version.node_id == a.node.address
    await a.set("text", "héllo", ttl=30.0, quorum=3)
    await a.set("doc", {"n": [1, 2]}, quorum=3)
    await a.delete("raw", quorum=3)
    for key in (b"raw", b"text", b"doc"):
        held = records(cluster, key)
        assert held[0] is not None
        assert held == [held[0]] * 3, key  # the local copy equals the decoded remote ones
    text = records(cluster, b"text")[0]
    assert text is not None and text.encoded and text.expires > 0
    assert records(cluster, b"raw")[0] == Record.deleted(records(cluster, b"raw")[0].version)  # type: ignore[union-attr]
    assert await cluster[1].get("text", quorum=2) == "héllo"
    assert await cluster[2].get("doc", quorum=3) == {"n": [1, 2]}
    assert await cluster[2].get("raw", "gone", quorum=3) == "gone"


async def test_a_stale_replica_is_repaired_when_the_others_agree(
    cluster: list[KVStore],
) -> None:
    a, b, c = cluster
    await a.set("k", b"new", quorum=3)
    newest = a.engine.get_record(b"k")
    assert newest is not None
    # c goes back to an older version behind the others' backs.
    c.engine.drop(c.engine.partition_of(b"k"))
    old = Version(newest.version.physical - 1, 0, newest.version.node_id)
    c.engine.put(b"k", Record(b"old", old))
    assert await b.get("k", quorum=3) == b"new"  # two identical answers win over c's
    await settle_loop()
    assert c.engine.get_record(b"k") == newest
    assert b.read_repairs == 1
    # In sync again: no repair, whatever the number of identical answers.
    assert await a.get("k", quorum=3) == b"new"
    await settle_loop()
    assert a.read_repairs == 0


async def test_a_remote_set_payload_is_still_decoded_and_checked(
    cluster: list[KVStore],
) -> None:
    a, b, _ = cluster
    await a.set("k", b"v", quorum=3)  # a's last sent payload is cached for its local run
    ctx = CommandContext(b.node.address, b.engine.partition_of(b"k"), "", False)
    for bad in (b"", b"\x01", encode_record(Record(b"v", Version(1, 0, "x")))[:-1]):
        with pytest.raises(MalformedPayloadError):
            a._h_set(ctx, b"k", bad)
    # A well-formed payload from a peer is decoded (not taken from the cache).
    held = a.engine.get_record(b"k")
    assert held is not None
    newer = Record(b"from-b", Version(held.version.physical + 10, 0, b.node.address))
    assert a._h_set(ctx, b"k", encode_record(newer)) == b""
    assert a.engine.get_record(b"k") == newer


async def test_get_and_set_over_real_tcp() -> None:
    port = free_port()
    peers = [f"127.0.0.{i}:{port}" for i in range(1, 4)]
    config = PeerRingConfig(partitions=16, request_timeout=5.0, transport="tcp")
    stores = [
        KVStore(StaticDiscovery(peers, self_address=p), replication=3, config=config) for p in peers
    ]
    try:
        for s in stores:
            await s.start()
        await asyncio.gather(*(s.wait_ready(30.0) for s in stores))
        for i in range(50):
            await stores[i % 3].set(f"k{i}", f"v{i}", quorum=2)
        for i in range(50):
            assert await stores[(i + 1) % 3].get(f"k{i}", quorum=2) == f"v{i}"
            assert await stores[(i + 2) % 3].get(f"k{i}", quorum=1) == f"v{i}"
        assert [s.reversioned_writes for s in stores] == [0, 0, 0]
        held = [s.engine.get_record(b"k7") for s in stores]
        assert held[0] is not None and held == [held[0]] * 3
    finally:
        for s in stores:
            await s.abort()
