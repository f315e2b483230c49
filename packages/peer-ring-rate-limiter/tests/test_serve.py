"""``peer-ring-ratelimit serve``: three real processes, the HTTP API, SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from peer_ring.core.testing import free_port

HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
BOUND = 60.0


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[list[str]]:
    port = free_port(*HOSTS)
    http = free_port(*HOSTS)
    peers = ",".join(f"{h}:{port}" for h in HOSTS)
    # stderr to files, not pipes: nobody reads a pipe while the test runs, and a node that
    # logged 64 KiB of warnings (a loaded machine) blocked on it and hung the test.
    logs = [(tmp_path / f"{h}.log").open("wb") for h in HOSTS]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "peer_ring.ratelimit.cli",
            "serve",
            "--listen",
            f"{h}:{port}",
            "--http",
            f"{h}:{http}",
            "--peers",
            peers,
            "--log-level",
            "warning",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,
        )
        for h, log in zip(HOSTS, logs, strict=True)
    ]
    urls = [f"http://{h}:{http}" for h in HOSTS]
    try:
        # Each poll is bounded too, and the loop by a deadline of its own: an outer wait_for
        # alone was seen not to end the wait (a node gone, the cancellation lost in aiohttp).
        poll = aiohttp.ClientTimeout(total=5.0)
        async with aiohttp.ClientSession(timeout=poll) as session:
            deadline = asyncio.get_running_loop().time() + BOUND

            async def ready(url: str) -> None:
                while True:
                    assert asyncio.get_running_loop().time() < deadline, f"{url} not ready"
                    try:
                        async with session.get(url + "/readyz") as r:
                            if r.status == 200:
                                return
                    except (aiohttp.ClientConnectionError, TimeoutError):
                        pass
                    await asyncio.sleep(0.1)  # polling a process: no event to wait on

            await asyncio.wait_for(asyncio.gather(*(ready(u) for u in urls)), BOUND)
        yield urls
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), BOUND)
        assert codes == [0, 0, 0], [(tmp_path / f"{h}.log").read_text()[-2000:] for h in HOSTS]
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
        for log in logs:
            log.close()


@pytest.mark.slow
async def test_http_api_is_exact_and_validates(servers: list[str]) -> None:
    hit = {"key": "api:user:1", "limit": 50, "period": 60, "algorithm": "fixed_window"}
    async with aiohttp.ClientSession() as s:

        async def one(i: int) -> dict[str, object]:
            async with s.post(servers[i % 3] + "/v1/hit", json=hit) as r:
                assert r.status == 200
                return await r.json()  # type: ignore[no-any-return]

        out = await asyncio.gather(*(one(i) for i in range(300)))
        assert sum(bool(d["allowed"]) for d in out) == 50
        async with s.post(servers[1] + "/v1/hits", json={"hits": [hit, {**hit, "key": "b"}]}) as r:
            batch = (await r.json())["decisions"]
        assert [d["allowed"] for d in batch] == [False, True]
        async with s.post(servers[2] + "/v1/hit", json={**hit, "cost": 0}) as r:
            assert r.headers["RateLimit-Remaining"] == "0" and "Retry-After" in r.headers
        for bad in (
            {"key": "k", "limit": -1, "period": 1},
            {"key": "k", "limit": 5, "period": 0},
            {"key": "k", "limit": 5, "period": 1, "algorithm": "nope"},
            {"key": ""},
            {"key": "x" * 5000, "limit": 5, "period": 1},
            [1, 2],
        ):
            async with s.post(servers[0] + "/v1/hit", json=bad) as r:
                assert r.status == 400 and "error" in await r.json()
        async with s.post(servers[0] + "/v1/hit", data=b"{not json") as r:
            assert r.status == 400
        async with s.post(servers[0] + "/v1/reset", json={"key": "api:user:1"}) as r:
            assert r.status == 204
        assert (await one(0))["allowed"]
        async with s.get(servers[0] + "/metrics") as r:
            text = await r.text()
        assert 'peer_ring_ratelimit_decisions_total{limit="50/60s",result="allowed"' in text
        # the core's metrics on the same registry
        assert "peer_ring_members 3.0" in text and "peer_ring_node_ready 1.0" in text
        async with s.get(servers[0] + "/v1/owner", params={"key": "api:user:1"}) as r:
            owner = await r.json()
        assert owner["owner"] == owner["replicas"][0] and len(owner["replicas"]) == 2
        async with s.get(servers[0] + "/cluster") as r:
            assert len((await r.json())["members"]) == 3
