"""SyncKVStore: three nodes over real gRPC, driven from plain threads (no event loop)."""

from __future__ import annotations

import threading

import pytest

from peer_ring.core import PeerRingConfig
from peer_ring.core.testing import free_port
from peer_ring.discovery.static import StaticDiscovery
from peer_ring.kv import SyncKVStore

CONFIG = PeerRingConfig(partitions=32, request_timeout=2.0)


def test_sync_stores_form_a_cluster_and_serve_threads() -> None:
    port = free_port()
    peers = [f"127.0.0.{i}:{port}" for i in (1, 2, 3)]
    stores: list[SyncKVStore] = []
    try:
        # The first two wait for each other's partitions: start without waiting for ready,
        # then wait on each (a node that waits alone blocks until its peers come up).
        for p in peers:
            stores.append(
                SyncKVStore(
                    StaticDiscovery(peers, self_address=p), ready_timeout=None, config=CONFIG
                )
            )
        for s in stores:
            s.run(s.store.wait_ready(30))
        a, b, c = stores
        a.set("user:1", {"name": "alice"}, ttl=60)
        assert b.get("user:1") == {"name": "alice"}
        assert c.exists("user:1")
        errors: list[BaseException] = []

        def worker(store: SyncKVStore) -> None:
            try:
                for _ in range(10):
                    store.incr("hits")
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(s,)) for s in stores for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        assert a.get("hits", quorum=2) == 60
        assert set(a.cluster_status()["members"]) == set(peers)
    finally:
        for s in reversed(stores):
            s.close()
    with pytest.raises(RuntimeError):
        stores[0].get("x")  # closed: its loop is gone
