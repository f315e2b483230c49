"""SyncKVStore's failure paths: a store that cannot be built leaves no thread behind, calls
from the store's own loop thread are refused instead of deadlocking, a closed facade refuses
calls and closing twice is harmless (one node over real gRPC on loopback)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import pytest

from peer_ring.core import InvalidArgumentError, PeerRingConfig
from peer_ring.core.testing import free_port
from peer_ring.discovery.static import StaticDiscovery
from peer_ring.kv import SyncKVStore


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "peer-ring-kv-loop"]


def test_a_store_that_cannot_be_built_raises_and_leaves_no_thread() -> None:
    before = len(loop_threads())
    me = f"127.0.0.1:{free_port()}"
    with pytest.raises(InvalidArgumentError, match="max_value_bytes"):
        SyncKVStore(StaticDiscovery([me], self_address=me), max_value_bytes=0)
    assert len(loop_threads()) == before


def test_own_thread_calls_timeouts_and_a_closed_facade_are_refused() -> None:
    me = f"127.0.0.1:{free_port()}"
    store = SyncKVStore(
        StaticDiscovery([me], self_address=me),
        replication=1,
        config=PeerRingConfig(partitions=8),
    )
    try:
        store.set("k", 1)

        async def from_the_loop_thread() -> object:
            return store.get("k")  # would wait on its own loop forever

        with pytest.raises(RuntimeError, match="from its own loop thread"):
            store.run(from_the_loop_thread())
        with pytest.raises(concurrent.futures.TimeoutError):
            store.run(asyncio.sleep(30), timeout=0.05)
        assert store.get("k") == 1  # still serving
    finally:
        store.close()
    store.close()  # idempotent
    with pytest.raises(RuntimeError, match="SyncKVStore is closed"):
        store.get("k")
    assert not any(t.is_alive() for t in loop_threads() if t is store._thread)
