"""Clock skew between real ``serve`` processes (libfaketime): later acknowledged writes win.

Five nodes (replication 3) run with wall clocks offset by libfaketime (``LD_PRELOAD`` +
``FAKETIME`` per process): -0.4 s, 0, +5 ms, +50 ms and +2 s. For every pair of nodes
where the first one's clock is ahead, a client writes a key through the first, waits for
the acknowledgement, writes it through the second, and reads it at R=2 through a third:
it must get the second value, every time. Skews between pairs range from 5 ms to 2.4 s.
Without the replicas' refusals (docs/consistency.md), most rounds read the first value.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from peer_ring.kv._local_cluster import LocalCluster, allocate_addresses

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

LIBFAKETIME = next(
    (
        p
        for p in (
            Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"),
            Path("/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"),
            Path("/usr/lib/faketime/libfaketime.so.1"),
        )
        if p.exists()
    ),
    None,
)
#: Wall-clock offset of each node, seconds (libfaketime's relative FAKETIME syntax).
OFFSETS = [-0.4, 0.0, 0.005, 0.05, 2.0]
KEYS_PER_PAIR = 8


def _faketime_env(offset: float) -> dict[str, str]:
    assert LIBFAKETIME is not None
    return {
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME": f"{offset:+.3f}",
        # Timers and timeouts keep the real monotonic clock; only the wall clock is off.
        "DONT_FAKE_MONOTONIC": "1",
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(require_component: Any) -> AsyncIterator[LocalCluster]:
    require_component(
        "libfaketime",
        LIBFAKETIME is not None,
        "apt-get install faketime libfaketime",
    )
    node_env = {i: _faketime_env(off) for i, off in enumerate(OFFSETS) if off}
    async with LocalCluster(
        allocate_addresses(len(OFFSETS)),
        serve_args=["--replication=3", "--partitions=64", "--request-timeout=5"],
        node_env=node_env,
    ) as cluster:
        await cluster.start(ready_within=90)
        yield cluster


async def test_a_later_acknowledged_write_wins_whatever_the_skew(cluster: LocalCluster) -> None:
    urls = [n.address.url for n in cluster.nodes]
    rounds = failures = 0
    seen_skews: set[float] = set()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        for ahead, behind in itertools.permutations(range(len(OFFSETS)), 2):
            if OFFSETS[ahead] <= OFFSETS[behind]:
                continue
            seen_skews.add(round(OFFSETS[ahead] - OFFSETS[behind], 3))
            reader = next(i for i in range(len(OFFSETS)) if i not in (ahead, behind))
            for k in range(KEYS_PER_PAIR):
                key = f"skew-{ahead}-{behind}-{k}"
                for node, value in ((ahead, b"first"), (behind, b"second")):
                    async with session.put(
                        f"{urls[node]}/kv/{key}", data=value, params={"quorum": "2"}
                    ) as r:
                        assert r.status == 204, await r.text()
                async with session.get(f"{urls[reader]}/kv/{key}", params={"quorum": "2"}) as r:
                    assert r.status == 200, await r.text()
                    rounds += 1
                    if await r.read() != b"second":
                        failures += 1
    assert min(seen_skews) <= 0.005 and max(seen_skews) >= 2.0
    assert rounds == 10 * KEYS_PER_PAIR
    assert failures == 0, f"{failures} of {rounds} reads returned the earlier write"


async def test_the_offsets_are_real(cluster: LocalCluster) -> None:
    # A fresh key written through the +2 s node carries a version stamped by its clock.
    ahead = OFFSETS.index(2.0)
    base = cluster.nodes[ahead].address.url
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        before = time.time()
        async with session.put(f"{base}/kv/offset-probe", data=b"v", params={"quorum": "2"}) as r:
            assert r.status == 204, await r.text()
        after = time.time()
        async with session.get(f"{base}/admin/key/offset-probe") as r:
            assert r.status == 200, await r.text()
            doc = await r.json()
    stamped = [a["version"]["wall_time"] for a in doc["replicas"] if a.get("found")]
    assert stamped
    assert before + 1.5 < stamped[0] < after + 2.5


async def test_cluster_reports_the_peers_clock_offsets(cluster: LocalCluster) -> None:
    # Node 0 runs 0.4 s behind: it sees the +2 s node 2.4 s ahead, the others 0.4-0.45 s.
    base = cluster.nodes[0].address.url
    peers = {n.address.peer: OFFSETS[i] - OFFSETS[0] for i, n in enumerate(cluster.nodes)}
    del peers[cluster.nodes[0].address.peer]
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        while True:
            async with session.get(f"{base}/cluster") as r:
                assert r.status == 200
                offsets = (await r.json())["clock_offsets"]
            if set(offsets["peers"]) == set(peers) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)  # the node measures every 5 s; nothing to wait on
    assert set(offsets["peers"]) == set(peers), offsets
    for peer, expected in peers.items():
        measured = offsets["peers"][peer]
        # NTP-style estimate: off by at most half the round trip (plus process scheduling).
        assert abs(measured["offset"] - expected) < 0.1 + measured["rtt"], (peer, measured)
    assert abs(offsets["max_abs_offset"] - 2.4) < 0.1
