"""The HTTP API against real ``peer-ring-kv serve`` processes on 127.0.0.1, .2 and .3.

One 3-node cluster is shared by the module (starting processes is the slow part); each node
listens on its own loopback address with the same ports, as pods do. The fault test kills a
node and restarts it, and runs last.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from peer_ring.kv._local_cluster import (
    LocalCluster,
    allocate_addresses,
    loopback_aliases_available,
)

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
MAX_VALUE = 64 * 1024
PARTITIONS = 128


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(require_component: Any) -> AsyncIterator[LocalCluster]:
    require_component(
        "loopback aliases 127.0.0.2 and 127.0.0.3",
        loopback_aliases_available(HOSTS),
        "Linux routes all of 127.0.0.0/8 to lo; elsewhere add the aliases to lo0",
    )
    addresses = allocate_addresses(3, hosts=HOSTS)
    async with LocalCluster(
        addresses,
        serve_args=[
            "--replication=3",
            f"--partitions={PARTITIONS}",
            f"--max-value-bytes={MAX_VALUE}",
            "--request-timeout=2",
        ],
    ) as cluster:
        await cluster.start(ready_within=60)
        yield cluster


@pytest_asyncio.fixture(loop_scope="module")
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


def url(cluster: LocalCluster, node: int, path: str) -> str:
    return f"{cluster.nodes[node].address.url}{path}"


async def test_nodes_use_one_port_on_distinct_loopback_addresses(cluster: LocalCluster) -> None:
    peers = [n.address.peer for n in cluster.nodes]
    assert [p.split(":")[0] for p in peers] == list(HOSTS)
    assert len({p.split(":")[1] for p in peers}) == 1


async def test_set_get_delete_through_different_nodes(
    cluster: LocalCluster, session: aiohttp.ClientSession
) -> None:
    async with session.put(url(cluster, 0, "/kv/user:1"), data=b"alice") as r:
        assert r.status == 204, await r.text()
    for node in (1, 2):
        async with session.get(url(cluster, node, "/kv/user:1"), params={"quorum": "2"}) as r:
            assert r.status == 200
            assert await r.read() == b"alice"
    async with session.delete(url(cluster, 2, "/kv/user:1")) as r:
        assert r.status == 204
    async with session.get(url(cluster, 0, "/kv/user:1")) as r:
        assert r.status == 404
        assert (await r.json())["key"] == "user:1"


async def test_ttl_query_expires_the_key(
    cluster: LocalCluster, session: aiohttp.ClientSession
) -> None:
    async with session.put(url(cluster, 1, "/kv/short"), data=b"v", params={"ttl": "0.5"}) as r:
        assert r.status == 204
    async with session.put(url(cluster, 1, "/kv/long"), data=b"v", params={"ttl": "600"}) as r:
        assert r.status == 204
    # Poll (bounded) for the expiry instead of sleeping a guessed amount.
    deadline = time.monotonic() + 10
    status = 200
    while status == 200 and time.monotonic() < deadline:
        async with session.get(url(cluster, 0, "/kv/short")) as r:
            status = r.status
        if status == 200:
            await asyncio.sleep(0.1)
    assert status == 404
    async with session.get(url(cluster, 0, "/kv/long")) as r:
        assert r.status == 200


async def test_quorum_greater_than_replication_is_400(
    cluster: LocalCluster, session: aiohttp.ClientSession
) -> None:
    async with session.put(
        url(cluster, 0, "/kv/k"), data=b"v", params={"replication": "2", "quorum": "3"}
    ) as r:
        assert r.status == 400
        body = await r.json()
        assert body["error"] == "quorum (3) cannot be greater than replication (2)"
    async with session.get(url(cluster, 0, "/kv/k"), params={"quorum": "x"}) as r:
        assert r.status == 400
    async with session.put(url(cluster, 0, "/kv/k"), data=b"v", params={"ttl": "-1"}) as r:
        assert r.status == 400


async def test_oversized_value_is_413(
    cluster: LocalCluster, session: aiohttp.ClientSession
) -> None:
    async with session.put(url(cluster, 2, "/kv/big"), data=b"x" * (MAX_VALUE + 1)) as r:
        assert r.status == 413
        body = await r.json()
        assert body["limit"] == MAX_VALUE
    async with session.put(url(cluster, 2, "/kv/big"), data=b"x" * MAX_VALUE) as r:
        assert r.status == 204


async def test_routing_errors(cluster: LocalCluster, session: aiohttp.ClientSession) -> None:
    async with session.get(url(cluster, 0, "/nothing/here")) as r:
        assert r.status == 404
        assert "error" in await r.json()
    async with session.patch(url(cluster, 0, "/kv/k")) as r:
        assert r.status == 405
    async with session.get(url(cluster, 0, "/kv/")) as r:
        assert r.status == 400


async def test_cluster_document(cluster: LocalCluster, session: aiohttp.ClientSession) -> None:
    peers = sorted(n.address.peer for n in cluster.nodes)
    for node in range(3):
        async with session.get(url(cluster, node, "/cluster")) as r:
            assert r.status == 200
            body = await r.json()
        assert body["self"] == cluster.nodes[node].address.peer
        assert body["members"] == peers
        assert body["partitions"] == PARTITIONS
        assert body["replication"] == 3
        # the data-movement state of the node (PeerRing.sync_status, issue 4)
        assert body["handoff"]["partitions"]["pending"] == 0
        assert sum(body["owned_partitions"].values()) == PARTITIONS
        assert set(body["owned_partitions"]) == set(peers)
        assert body["replica_partitions"] == dict.fromkeys(peers, PARTITIONS)


async def test_metrics_names(cluster: LocalCluster, session: aiohttp.ClientSession) -> None:
    async with session.put(url(cluster, 0, "/kv/metric-key"), data=b"v") as r:
        assert r.status == 204
    async with session.get(url(cluster, 0, "/metrics")) as r:
        assert r.status == 200
        text = await r.text()
    for name in (
        "peer_ring_kv_http_requests_total{",
        "peer_ring_kv_http_request_duration_seconds_bucket{",
        "peer_ring_kv_keys ",
        "peer_ring_kv_size_bytes ",
        "peer_ring_kv_evictions_total ",
        "peer_ring_kv_expired_total ",
        "peer_ring_kv_read_repairs_total ",
        "peer_ring_members 3.0",
        "peer_ring_partitions ",
        "peer_ring_ready 1.0",
        "peer_ring_transport_",  # the gRPC transport's stats()
    ):
        assert name in text, name


async def test_killed_node_fails_quorum_3_but_not_quorum_2(
    cluster: LocalCluster, session: aiohttp.ClientSession
) -> None:
    keys = [f"fault:{i}" for i in range(20)]
    for key in keys:
        async with session.put(url(cluster, 0, f"/kv/{key}"), data=key.encode()) as r:
            assert r.status == 204
    victim = cluster.nodes[2]
    code = await victim.kill()
    assert code == -9
    try:
        async with session.get(url(cluster, 0, f"/kv/{keys[0]}"), params={"quorum": "3"}) as r:
            assert r.status == 503
            body = await r.json()
        assert body["unreachable"] == [victim.address.peer]
        assert victim.address.peer in body["error"]
        for i, key in enumerate(keys):
            node = i % 2  # through both survivors
            async with session.get(url(cluster, node, f"/kv/{key}"), params={"quorum": "2"}) as r:
                assert r.status == 200, await r.text()
                assert await r.read() == key.encode()
        async with session.put(url(cluster, 1, "/kv/during-failure"), data=b"w2") as r:
            assert r.status == 204
    finally:
        await cluster.start_node(2, ready_within=60)
    # The restarted node (empty memory) coordinates reads and still sees every write.
    for key in [*keys, "during-failure"]:
        async with session.get(url(cluster, 2, f"/kv/{key}"), params={"quorum": "2"}) as r:
            assert r.status == 200, await r.text()
