"""Embedded observability: metrics on the application's registry, cluster_status()."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from peer_ring.core import PeerRingConfig
from peer_ring.kv import KVStore
from peer_ring.kv._server import KVHttpApi
from peer_ring.kv.metrics import register_metrics

PEERS = [f"127.0.0.{i}:7501" for i in range(1, 4)]
CONFIG = PeerRingConfig(partitions=32, request_timeout=1.0)


@pytest.fixture
async def cluster(start_stores: Callable[..., Awaitable[list[KVStore]]]) -> list[KVStore]:
    return await start_stores(PEERS, config=CONFIG)


async def test_metrics_on_the_applications_own_registry(cluster: list[KVStore]) -> None:
    a = cluster[0]
    await a.mset({f"k{i}": i for i in range(7)})
    registry = CollectorRegistry(auto_describe=True)  # as the default REGISTRY
    collectors = register_metrics(a, registry)
    text = generate_latest(registry).decode()
    assert "peer_ring_kv_keys 7.0" in text
    assert "peer_ring_ready 1.0" in text
    assert "peer_ring_members" in text  # the core's node figures
    with pytest.raises(ValueError):
        register_metrics(cluster[1], registry)  # names already taken: refused, not mixed
    for collector in collectors:
        registry.unregister(collector)
    register_metrics(cluster[1], registry)  # free again


async def test_cluster_status_is_what_get_cluster_serves(cluster: list[KVStore]) -> None:
    a = cluster[0]
    api = KVHttpApi(a)
    api.set_ready(True)
    status = a.cluster_status()
    assert status == api.cluster_info()
    assert status["members"] == sorted(PEERS) or set(status["members"]) == set(PEERS)
    assert status["ready"] is True
