"""``peer-ring-kv serve`` as a process, a case test_cli_serve.py leaves out: one node with the
default replication (it serves, warns that quorum operations will fail, answers 503 to them,
serves replication 1, and still stops cleanly)."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator

import aiohttp
import pytest

from peer_ring.kv._local_cluster import LocalCluster, allocate_addresses

pytestmark = pytest.mark.slow


@pytest.fixture
async def lonely() -> AsyncIterator[LocalCluster]:
    # No --replication: the default (3, quorum 2) on a one-node ring.
    async with LocalCluster(allocate_addresses(1), serve_args=["--partitions=16"]) as cluster:
        await cluster.start(ready_within=60)
        yield cluster


async def test_one_node_with_the_default_replication_warns_and_answers_503(
    lonely: LocalCluster,
) -> None:
    node = lonely.nodes[0]
    log = node.log_path.read_text()
    assert "only 1 member(s) for the default quorum of 2" in log
    assert "use --replication 1" in log
    async with aiohttp.ClientSession() as session:
        async with session.put(f"{node.address.url}/kv/k", data=b"v") as r:
            assert r.status == 503
            assert (await r.json())["quorum"] == 2
        async with session.put(
            f"{node.address.url}/kv/k", data=b"v", params={"replication": "1"}
        ) as r:
            assert r.status == 204
    assert await node.kill(signal.SIGTERM, within=20) == 0
    assert node.log_path.read_text().rstrip().endswith("stopped")
