"""``peer-ring-kv serve`` as a process: ready line, SIGTERM/SIGINT, exit codes, bearer token."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from importlib.metadata import entry_points

import aiohttp
import pytest

from peer_ring.kv._local_cluster import LocalCluster, allocate_addresses

pytestmark = pytest.mark.slow

# The node processes must be configured by their flags alone, never by PEER_RING_* variables
# that happen to be set where the tests run.
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PEER_RING_")}

TOKEN = "t0ken-for-tests"


async def _run(*argv: str, within: float = 60.0) -> tuple[int, str]:
    """Run ``python -m peer_ring.kv.cli *argv`` to completion; returns (status, output)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "peer_ring.kv.cli",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=CLEAN_ENV,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), within)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace")


@pytest.fixture
async def single() -> AsyncIterator[LocalCluster]:
    addresses = allocate_addresses(1)
    async with LocalCluster(
        addresses, serve_args=["--replication=1", "--partitions=16", f"--http-token={TOKEN}"]
    ) as cluster:
        await cluster.start(ready_within=60)
        yield cluster


def test_console_script_is_declared() -> None:
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts.get("peer-ring-kv") == "peer_ring.kv.cli:main"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve"], "the peer address is required"),
        (["serve", "--listen", "127.0.0.1:7101", "--quorum", "4"], "cannot be greater"),
        (["serve", "--listen", "127.0.0.1:7101", "--replication", "many"], "expected an integer"),
        (["serve", "--bogus"], "unrecognized arguments: --bogus"),
        (["serve", "--discovery", "dns"], "unknown discovery 'dns'"),
        (["demo", "--nodes", "1"], "--nodes must be between 3"),
    ],
)
async def test_bad_usage_exits_2(argv: list[str], message: str) -> None:
    code, out = await _run(*argv)
    assert code == 2, out
    assert message in out


async def test_ready_line_token_and_sigterm(single: LocalCluster) -> None:
    node = single.nodes[0]
    log = node.log_path.read_text()
    assert f"ready peer={node.address.peer} http={node.address.url}" in log
    base = node.address.url
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/kv/k") as r:
            assert r.status == 401
        async with session.get(f"{base}/metrics", headers={"Authorization": "Bearer no"}) as r:
            assert r.status == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with session.put(f"{base}/kv/k", data=b"v", headers=auth) as r:
            assert r.status == 204
        async with session.get(f"{base}/kv/k", headers=auth) as r:
            assert await r.read() == b"v"
        async with session.get(f"{base}/healthz") as r:
            assert r.status == 200
    assert await node.kill(signal.SIGTERM, within=20) == 0
    log = node.log_path.read_text()
    assert "SIGTERM received: shutting down" in log
    assert log.rstrip().endswith("stopped")
    assert "Traceback" not in log


async def test_sigint_is_a_clean_shutdown_too(single: LocalCluster) -> None:
    node = single.nodes[0]
    assert await node.kill(signal.SIGINT, within=20) == 0
    assert "SIGINT received" in node.log_path.read_text()


@pytest.mark.parametrize("which", ["peer", "http"])
async def test_address_in_use_exits_1(which: str) -> None:
    address = allocate_addresses(1)[0]
    taken = address.peer if which == "peer" else address.http
    host, port = taken.rsplit(":", 1)
    with socket.socket() as blocker:
        blocker.bind((host, int(port)))
        blocker.listen()
        code, out = await _run(
            "serve", "--listen", address.peer, "--http", address.http, "--replication=1"
        )
    assert code == 1, out
    expected = "cannot listen for peers" if which == "peer" else "cannot serve HTTP"
    assert expected in out
    assert taken.split(":")[1] in out


async def test_ready_line_only_after_the_initial_sync() -> None:
    # Node 0 of two starts alone: it joined the ring but cannot pull the partitions it
    # shares with node 1, so neither /readyz nor the ready line may say ready yet.
    addresses = allocate_addresses(2)
    async with LocalCluster(
        addresses, serve_args=["--replication=2", "--partitions=16", "--quorum=1"]
    ) as cluster:
        first = cluster.nodes[0]
        await first.start()
        started = False
        async with aiohttp.ClientSession() as session:
            for _ in range(200):  # bounded: 200 x 50 ms
                try:
                    async with session.get(f"{first.address.url}/healthz") as r:
                        started = r.status == 200
                except aiohttp.ClientError:
                    pass
                if started and "node " in first.log_path.read_text():
                    break
                await asyncio.sleep(0.05)
            assert started
            await asyncio.sleep(0.5)  # give a premature ready line the time to show
            async with session.get(f"{first.address.url}/readyz") as r:
                assert r.status == 503
        assert f"ready peer={first.address.peer}" not in first.log_path.read_text()
        await cluster.start(ready_within=60)
        assert f"ready peer={first.address.peer}" in first.log_path.read_text()
