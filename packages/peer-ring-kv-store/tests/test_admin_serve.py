"""``peer-ring-kv admin`` against real ``serve`` processes (3 nodes on 127.0.0.1-3, token).

The CLI runs in a worker thread (it is synchronous, standard-library HTTP) against the
nodes' HTTP APIs. The drain test makes a node leave for good: it has a cluster of its own,
so the tests pass in any order (pytest-randomly).
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from peer_ring.core import Ring
from peer_ring.kv._admin_cli import run_admin
from peer_ring.kv._local_cluster import (
    LocalCluster,
    NodeFailedError,
    allocate_addresses,
    loopback_aliases_available,
)
from peer_ring.kv.cli import build_parser

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
PARTITIONS = 64
TOKEN = "admin-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: Cluster starts tried when a node could not bind its port (taken by another process).
START_ATTEMPTS = 3


async def three_nodes(require_component: Any) -> AsyncIterator[LocalCluster]:
    require_component(
        "loopback aliases 127.0.0.2 and 127.0.0.3",
        loopback_aliases_available(HOSTS),
        "Linux routes all of 127.0.0.0/8 to lo; elsewhere add the aliases to lo0",
    )
    for attempt in range(1, START_ATTEMPTS + 1):
        cluster = LocalCluster(
            allocate_addresses(3, hosts=HOSTS),
            serve_args=["--replication=3", f"--partitions={PARTITIONS}", "--request-timeout=2"],
            env={"PEER_RING_HTTP_TOKEN": TOKEN},
        )
        try:
            await cluster.start(ready_within=60)
        except NodeFailedError as exc:
            await cluster.close()
            # The ports were free when chosen and released for the nodes to bind; another
            # process (a parallel test run) can take one in between. Only that is retried,
            # with fresh ports: anything else fails the test.
            if attempt < START_ATTEMPTS and "address already in use" in str(exc).lower():
                continue
            raise
        try:
            yield cluster
        finally:
            await cluster.close()
        return


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(require_component: Any) -> AsyncIterator[LocalCluster]:
    """Shared by the tests that leave the cluster as they found it."""
    async for c in three_nodes(require_component):
        yield c


@pytest_asyncio.fixture(loop_scope="module")
async def drained_cluster(require_component: Any) -> AsyncIterator[LocalCluster]:
    """A cluster of the drain test's own: a node leaves it for good."""
    async for c in three_nodes(require_component):
        yield c


@pytest_asyncio.fixture(loop_scope="module")
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        headers=AUTH, timeout=aiohttp.ClientTimeout(total=15)
    ) as session:
        yield session


async def admin(
    cluster: LocalCluster, *argv: str, node: int = 0, token: str | None = TOKEN
) -> tuple[int, str]:
    """Run ``peer-ring-kv admin --url <node> argv...``; (exit status, stdout)."""
    args = build_parser().parse_args(["admin", "--url", cluster.nodes[node].address.url, *argv])
    env = {"PEER_RING_HTTP_TOKEN": token} if token else {}
    out = io.StringIO()
    status = await asyncio.to_thread(run_admin, args, env, out)
    return status, out.getvalue()


async def test_members_table_and_json(cluster: LocalCluster) -> None:
    status, text = await admin(cluster, "members")
    assert status == 0, text
    peers = [n.address.peer for n in cluster.nodes]
    assert text.startswith(f"3 members, {PARTITIONS} partitions, N=3 W/R=2")
    for peer in peers:
        assert peer in text
    assert text.count(" ready ") == 3
    status, raw = await admin(cluster, "--json", "members", node=1)
    doc = json.loads(raw)
    assert doc["cluster"]["members"] == sorted(peers)
    assert set(doc["nodes"]) == set(peers)
    assert all(info["ok"] for info in doc["nodes"].values())
    assert sum(doc["cluster"]["owned_partitions"].values()) == PARTITIONS


async def test_partitions_are_the_rings_preference_lists(cluster: LocalCluster) -> None:
    status, raw = await admin(cluster, "--json", "partitions", "-n", "2")
    assert status == 0
    rows = json.loads(raw)
    ring = Ring([n.address.peer for n in cluster.nodes], PARTITIONS)
    assert len(rows) == PARTITIONS
    for row in rows:
        assert row["owner"] == ring.owner(row["partition"])
        assert row["preference_list"] == list(ring.preference_list(row["partition"], 2))
    status, text = await admin(cluster, "partitions", "-p", "7")
    assert status == 0
    assert ring.owner(7) in text.splitlines()[-1]
    status, _ = await admin(cluster, "partitions", "-p", str(PARTITIONS))
    assert status == 1  # out of range: a clear error, not a traceback


async def test_key_shows_each_replicas_version(
    cluster: LocalCluster, session: aiohttp.ClientSession
) -> None:
    url = cluster.nodes[0].address.url
    for value in (b"v1", b"v2-longer"):
        async with session.put(f"{url}/kv/admin:key", data=value, params={"quorum": "3"}) as r:
            assert r.status == 204
    status, raw = await admin(cluster, "--json", "key", "admin:key", node=2)
    assert status == 0
    doc = json.loads(raw)
    assert doc["consistent"]
    assert sorted(r["node"] for r in doc["replicas"]) == sorted(
        n.address.peer for n in cluster.nodes
    )
    assert {r["value_bytes"] for r in doc["replicas"]} == {len(b"v2-longer")}
    assert len({json.dumps(r["version"]) for r in doc["replicas"]}) == 1
    status, text = await admin(cluster, "key", "absent:key")
    assert status == 0
    assert text.count(" absent ") == 3
    assert "replicas agree" in text  # absent everywhere


async def test_handoffs_idle_cluster(cluster: LocalCluster) -> None:
    status, text = await admin(cluster, "handoffs")
    assert status == 0
    assert "no handoff in progress" in text


async def test_token_is_required_and_errors_are_one_line(cluster: LocalCluster) -> None:
    status, text = await admin(cluster, "members", token=None)
    assert status == 1
    assert text == ""
    status, text = await admin(cluster, "members", token="wrong")
    assert status == 1
    args = build_parser().parse_args(["admin", "--url", "http://127.0.0.1:1", "members"])
    assert await asyncio.to_thread(run_admin, args, {}, io.StringIO()) == 1


async def test_ui_assets_are_served_without_token(cluster: LocalCluster) -> None:
    url = cluster.nodes[0].address.url
    async with aiohttp.ClientSession() as anonymous:
        for path, kind in (("/ui/", "text/html"), ("/ui/app.js", "text/javascript")):
            async with anonymous.get(url + path) as r:
                assert r.status == 200
                assert r.content_type == kind
        async with anonymous.get(url + "/admin/nodes") as r:
            assert r.status == 401  # the data is not


async def test_drain_makes_the_node_leave_and_exit(
    drained_cluster: LocalCluster, session: aiohttp.ClientSession
) -> None:
    cluster = drained_cluster
    url = cluster.nodes[0].address.url
    async with session.put(f"{url}/kv/drained:key", data=b"kept", params={"quorum": "3"}) as r:
        assert r.status == 204
    status, _ = await admin(cluster, "drain", node=2)
    assert status == 2  # refused without --yes
    status, text = await admin(cluster, "drain", "--yes", node=2)
    assert status == 0, text
    assert cluster.nodes[2].address.peer in text
    assert await cluster.nodes[2].wait(within=60.0) == 0  # left, then exited cleanly
    deadline = time.monotonic() + 30.0
    while True:  # the others drop it from the ring (polling other processes)
        status, raw = await admin(cluster, "--json", "members")
        if len(json.loads(raw)["cluster"]["members"]) == 2:
            break
        assert time.monotonic() < deadline, raw
        await asyncio.sleep(0.2)
    async with session.get(f"{url}/kv/drained:key", params={"quorum": "2"}) as r:
        assert r.status == 200
        assert await r.read() == b"kept"
