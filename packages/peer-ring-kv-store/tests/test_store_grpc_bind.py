"""Two KVStores on one peer address (a second uvicorn worker): a clear error, no harm done."""

from __future__ import annotations

import errno

import pytest

from peer_ring.core.testing import free_port
from peer_ring.discovery.static import StaticDiscovery
from peer_ring.kv import KVStore


async def test_a_second_node_on_the_same_address_says_one_node_per_process() -> None:
    address = f"127.0.0.1:{free_port()}"
    first = KVStore(StaticDiscovery([address], self_address=address), replication=1)
    second = KVStore(StaticDiscovery([address], self_address=address), replication=1)
    await first.start()
    try:
        with pytest.raises(OSError, match="one cluster node") as info:
            await second.start()
        assert info.value.errno == errno.EADDRINUSE
        assert "One node per process" in str(info.value)
        assert not second.running
        await first.set("k", b"v")
        assert await first.get("k") == b"v"
    finally:
        await second.stop()
        await first.stop()
