"""Gubernator v2 as an optional baseline of ``tools/bench ratelimit``.

Three ``gubernator`` processes on 127.0.0.1-3 (member-list discovery), built from their Go
module by ``tools/gubernator-test-env`` and cached under ``~/.cache/peer-ring/bin``. The
load comes from Python, as for the other systems: one client process per instance (the
sidecar deployment), each a closed loop of hits in flight against *its* instance's HTTP
API (``POST /v1/GetRateLimits``, one hit per request, aiohttp); the instance forwards a
hit to the key's owner itself (Gubernator batches those per peer).

Gubernator's member-list discovery names each member by the host name, so three processes
on one machine would collide: each runs in its own UTS namespace (``unshare --uts``) with
a host name of its own. Gubernator keeps limits in memory only (no copy on another node):
the comparable peer-ring figure is replication 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchlib._procs import REPO, free_port

#: Gubernator's algorithm ids (gubernator.proto): TOKEN_BUCKET = 0, LEAKY_BUCKET = 1.
ALGORITHMS = {"token_bucket": 0, "leaky_bucket": 1}
_DIE_WITH_PARENT = (
    "import ctypes, os, sys; ctypes.CDLL(None).prctl(1, 9); os.execvp(sys.argv[1], sys.argv[1:])"
)


def gubernator_binary() -> tuple[str | None, str]:
    """``(path, version)`` of a cached build (``tools/gubernator-test-env --check``)."""
    env_path = os.environ.get("PEER_RING_GUBERNATOR")
    if env_path:
        return env_path, "from PEER_RING_GUBERNATOR"
    tool = REPO / "tools" / "gubernator-test-env"
    proc = subprocess.run(
        [str(tool), "--check"], capture_output=True, text=True, timeout=30, check=False
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        return None, ""
    path = proc.stdout.strip().splitlines()[-1]
    stamp = Path(path + ".version")
    return path, stamp.read_text().strip() if stamp.exists() else "?"


class GubernatorCluster:
    """Three Gubernator instances on loopback; ``http[i]`` is instance i's HTTP address."""

    def __init__(self, binary: str, workdir: Path, nodes: int = 3) -> None:
        self.binary = binary
        self.workdir = workdir
        self.hosts = [f"127.0.0.{i + 1}" for i in range(nodes)]
        self.procs: list[asyncio.subprocess.Process] = []
        self.http: list[str] = []

    async def start(self) -> None:
        """Start every instance; wait (bounded) until each sees all of them."""
        if shutil.which("unshare") is None:
            raise RuntimeError("`unshare` (util-linux) is needed to give each instance a host name")
        grpc_port, http_port, ml_port = (free_port(self.hosts) for _ in range(3))
        for i, host in enumerate(self.hosts):
            env = dict(os.environ)
            env.update(
                GUBER_GRPC_ADDRESS=f"{host}:{grpc_port}",
                GUBER_HTTP_ADDRESS=f"{host}:{http_port}",
                GUBER_ADVERTISE_ADDRESS=f"{host}:{grpc_port}",
                GUBER_PEER_DISCOVERY_TYPE="member-list",
                GUBER_MEMBERLIST_ADDRESS=f"{host}:{ml_port}",
                GUBER_MEMBERLIST_BIND_ADDRESS=f"{host}:{ml_port}",
                GUBER_MEMBERLIST_KNOWN_NODES=f"{self.hosts[0]}:{ml_port}",
                GUBER_INSTANCE_ID=f"bench-{i}",
                GUBER_LOG_LEVEL="warn",
            )
            log = (self.workdir / f"gubernator-{i}.log").open("ab")
            # unshare execs in place (no fork) and sh execs gubernator: the pid is its own.
            cmd = f"hostname bench-gubernator-{i} && exec {self.binary}"
            self.procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-c",
                    _DIE_WITH_PARENT,
                    "unshare",
                    "--uts",
                    "sh",
                    "-c",
                    cmd,
                    env=env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            )
            self.http.append(f"http://{host}:{http_port}")
        await self._wait_for_peers(len(self.hosts), 60)

    async def _wait_for_peers(self, want: int, within: float) -> None:
        import aiohttp

        deadline = time.monotonic() + within
        async with aiohttp.ClientSession() as http:
            for base in self.http:
                while True:
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        async with http.get(
                            f"{base}/v1/HealthCheck", timeout=aiohttp.ClientTimeout(total=2)
                        ) as resp:
                            body = await resp.json()
                            if int(body.get("peer_count", 0)) >= want:
                                break
                    if any(p.returncode is not None for p in self.procs):
                        raise RuntimeError("a gubernator instance exited; see its log")
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"gubernator at {base} did not see {want} peers")
                    await asyncio.sleep(0.2)

    @property
    def pids(self) -> list[int]:
        """The instances' pids."""
        return [p.pid for p in self.procs]

    async def stop(self) -> None:
        """Kill every instance (by process group) and reap it."""
        for p in self.procs:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
        for p in self.procs:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(p.wait(), 10)


async def gubernator_child(spec: dict[str, Any], closed_loop: Any) -> dict[str, Any]:
    """One client process: hits against its own instance's HTTP API."""
    import aiohttp

    url = spec["gubernator_http"] + "/v1/GetRateLimits"
    algorithm = ALGORITHMS[spec["algorithm"]]
    limit, duration_ms = spec["limit"], 1000
    connector = aiohttp.TCPConnector(limit=spec["concurrency"])
    async with aiohttp.ClientSession(connector=connector) as http:

        async def hit(key: str) -> bool:
            body = {
                "requests": [
                    {
                        "name": "bench",
                        "unique_key": key,
                        "hits": 1,
                        "limit": limit,
                        "duration": duration_ms,
                        "algorithm": algorithm,
                    }
                ]
            }
            async with http.post(url, json=body) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}")
                out = (await resp.json())["responses"][0]
            if out.get("error"):
                raise RuntimeError(out["error"])
            return bool(out.get("status", "UNDER_LIMIT") == "UNDER_LIMIT")

        return await closed_loop(  # type: ignore[no-any-return]
            hit,
            spec["keys"],
            spec["concurrency"],
            spec["start_at"],
            spec["warmup"],
            spec["duration"],
            spec["seed"],
        )
