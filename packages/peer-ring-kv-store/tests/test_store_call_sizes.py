"""Per-call replication/quorum: the pairs a store remembers as checked, and the one-call
local-read check (``PeerRing.reads_here``) that ``get`` uses."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from peer_ring.core import InvalidArgumentError, PeerRingConfig
from peer_ring.kv import ClusterTooSmallError, KVStore

PEERS = [f"127.0.0.{i}:7311" for i in range(1, 4)]
CONFIG = PeerRingConfig(partitions=64, request_timeout=1.0)


@pytest.fixture
async def cluster(start_stores: Callable[..., Awaitable[list[KVStore]]]) -> list[KVStore]:
    return await start_stores(PEERS, config=CONFIG)


async def test_a_checked_pair_is_checked_again_after_the_ring_shrinks(
    cluster: list[KVStore],
) -> None:
    a = cluster[0]
    for _ in range(3):  # accepted, and remembered as accepted
        await a.set("k", b"v", replication=3, quorum=3)
        assert await a.get("k", replication=3, quorum=3) == b"v"
    # One member fewer in a's ring: 3 copies with a quorum of 3 no longer fit.
    assert a.node.membership.mark_down(PEERS[2])
    assert len(a.node.ring) == 2
    with pytest.raises(ClusterTooSmallError, match="larger than the cluster"):
        await a.set("k", b"w", replication=3, quorum=3)
    with pytest.raises(ClusterTooSmallError):
        await a.get("k", replication=3, quorum=3)
    # A pair that still fits is accepted (and remembered under the new ring).
    await a.set("k", b"x", replication=3, quorum=2)
    assert await a.get("k", replication=3, quorum=2) == b"x"


async def test_equal_values_of_other_types_are_still_refused(cluster: list[KVStore]) -> None:
    a = cluster[0]
    await a.set("k", b"v", replication=1, quorum=1)
    await a.set("k", b"v", replication=2, quorum=1)
    await a.set("k", b"v", replication=2)
    # 1.0 == True == 1 and (2.0, 1) == (2, 1): none of them is taken from what was accepted.
    bads: list[dict[str, object]] = [
        {"replication": True, "quorum": 1},
        {"replication": 2.0, "quorum": 1},
        {"replication": 2, "quorum": 1.0},
        {"replication": 2, "quorum": True},
        {"replication": 2.0},
    ]
    for bad in bads:
        with pytest.raises(InvalidArgumentError):
            await a.set("k", b"v", **bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError):
            await a.get("k", **bad)  # type: ignore[arg-type]
    assert a.running


async def test_many_pairs_stay_checked(cluster: list[KVStore]) -> None:
    a = cluster[0]
    # More pairs than the store remembers (it forgets them all then): each still works.
    for n in range(1, 101):
        await a.set("k", b"v", replication=n, quorum=1)
    with pytest.raises(InvalidArgumentError):
        await a.set("k", b"v", replication=5, quorum=6)


async def test_reads_here_is_membership_and_readiness(cluster: list[KVStore]) -> None:
    for store in cluster:
        node = store.node
        for n in (1, 2, 3, 5):
            for p in range(CONFIG.partitions):
                expected = node.address in node.ring.preference_list(p, n) and (
                    node.partition_ready(p)
                )
                assert node.reads_here(p, n) is expected
    node = cluster[0].node
    assert any(node.reads_here(p, 1) for p in range(CONFIG.partitions))
    assert not all(node.reads_here(p, 1) for p in range(CONFIG.partitions))
    for p in (-1, CONFIG.partitions):
        with pytest.raises(InvalidArgumentError):
            node.reads_here(p, 1)
    with pytest.raises(InvalidArgumentError):
        node.reads_here(0, 0)
