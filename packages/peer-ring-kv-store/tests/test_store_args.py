"""Bad arguments at the KVStore boundary: typed InvalidArgumentError, the node keeps running."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import pytest

from peer_ring.core import InvalidArgumentError, PeerRingConfig
from peer_ring.core.testing import FakeClock, FixedDiscovery, MemoryNetwork
from peer_ring.kv import (
    ClusterTooSmallError,
    InvalidKeyError,
    InvalidValueError,
    KeyTooLargeError,
    KVStore,
)

PEERS = [f"127.0.0.{i}:7301" for i in range(1, 4)]
CONFIG = PeerRingConfig(partitions=64, request_timeout=1.0)


@pytest.fixture
async def cluster(start_stores: Callable[..., Awaitable[list[KVStore]]]) -> list[KVStore]:
    return await start_stores(PEERS, config=CONFIG)


@pytest.mark.parametrize("ttl", [math.inf, -math.inf, math.nan, 0, -1, True, False, "5"])
async def test_bad_ttl(cluster: list[KVStore], ttl: object) -> None:
    with pytest.raises(InvalidArgumentError, match="ttl"):
        await cluster[0].set("k", b"v", ttl=ttl)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="ttl"):
        await cluster[0].mset({"k": b"v"}, ttl=ttl)  # type: ignore[arg-type]


@pytest.mark.parametrize("interval", [0, -1, math.inf, math.nan, True])
def test_bad_expiry_interval_is_refused_at_construction(interval: object) -> None:
    clock = FakeClock()
    with pytest.raises(InvalidArgumentError, match="expiry_interval"):
        KVStore(
            FixedDiscovery(PEERS[0], PEERS),
            config=CONFIG,
            transport=MemoryNetwork(clock).transport(PEERS[0]),
            clock=clock,
            expiry_interval=interval,  # type: ignore[arg-type]
        )


async def test_empty_key_is_an_invalid_key_not_too_large(cluster: list[KVStore]) -> None:
    a = cluster[0]
    for call in (a.get(""), a.set("", b"v"), a.delete(b""), a.mget([""]), a.mset({"": 1})):
        with pytest.raises(InvalidKeyError) as info:
            await call
        assert not isinstance(info.value, KeyTooLargeError)
    with pytest.raises(InvalidKeyError):
        await a.get(3)  # type: ignore[call-overload, arg-type]
    with pytest.raises(InvalidKeyError, match="UTF-8"):
        await a.set("\ud800", b"v")
    with pytest.raises(KeyTooLargeError):
        await a.set("x" * (64 * 1024 + 1), b"v")


async def test_a_value_the_codec_cannot_encode(cluster: list[KVStore]) -> None:
    with pytest.raises(InvalidValueError, match="set"):
        await cluster[0].set("k", {1, 2})
    with pytest.raises(TypeError):  # still a TypeError for code that caught that
        await cluster[0].mset({"k": object()})


async def test_replication_and_quorum_checks(cluster: list[KVStore]) -> None:
    a = cluster[0]
    with pytest.raises(ClusterTooSmallError, match="larger than the cluster"):
        await a.set("k", b"v", replication=5, quorum=4)
    with pytest.raises(ClusterTooSmallError):
        await a.get("k", replication=7)  # default quorum of 7 is 4 > 3 members
    for bad in ({"replication": True}, {"quorum": 0}, {"replication": 2, "quorum": 3}):
        with pytest.raises(InvalidArgumentError):
            await a.get("k", **bad)  # type: ignore[arg-type]
    # Larger than the cluster with a quorum it can reach: one copy per member.
    await a.set("k", b"v", replication=5, quorum=3)
    assert await a.get("k", replication=5, quorum=3) == b"v"
    assert a.running
