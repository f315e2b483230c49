"""Real ``peer-ring-ratelimit serve`` processes and a hit workload, for the rate limiter's
e2e scenarios (``scenarios/test_ratelimit.py``).

Nodes are the KV suite's :class:`LocalNode` processes (own process group, log file) running
the rate limiter's CLI on ``127.A.B.i`` loopback addresses, membership through a peers file
that this module rewrites to scale. The workload sends ``POST /v1/hit`` through the ready
nodes and records every outcome, so a scenario can compare the admissions against the exact
expectation: per key, exactly ``limit`` admitted in the window, none lost, none twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from e2e.drivers.local import random_hosts
from peer_ring.kv._local_cluster import LocalNode, allocate_addresses


class RateLimitCluster:
    """Up to ``capacity`` serve processes; ``members`` lists the node indexes in the ring."""

    def __init__(self, log_dir: Path, capacity: int = 5, extra_args: tuple[str, ...] = ()) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir = log_dir
        self.hosts = random_hosts(capacity)
        self.addresses = allocate_addresses(capacity, hosts=self.hosts)
        self.peers_file = log_dir / "peers"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PEER_RING_")}
        env["PYTHONUNBUFFERED"] = "1"
        self.nodes = [
            LocalNode(
                i,
                a,
                [
                    sys.executable,
                    "-m",
                    "peer_ring.ratelimit.cli",
                    "serve",
                    "--listen",
                    a.peer,
                    "--http",
                    a.http,
                    "--peers-file",
                    str(self.peers_file),
                    "--replication",
                    "2",
                    "--fail-policy",
                    "fail-closed",
                    "--down-after",
                    "3",
                    "--timeout",
                    "2",
                    "--log-level",
                    "info",
                    *extra_args,
                ],
                log_dir / f"node-{i + 1}.log",
                env,
            )
            for i, a in enumerate(self.addresses)
        ]
        self.members: list[int] = []
        self.available: set[int] = set()  # ready and not being stopped: clients use these
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        return self._session

    def write_members(self, indexes: list[int]) -> None:
        """Rewrite the peers file atomically (nodes re-read it every second)."""
        self.members = sorted(indexes)
        tmp = self.peers_file.with_name(".peers.tmp")
        tmp.write_text("".join(f"{self.addresses[i].peer}\n" for i in self.members))
        os.replace(tmp, self.peers_file)

    def url(self, index: int) -> str:
        return self.addresses[index].url

    def endpoints(self) -> list[str]:
        return [self.url(i) for i in sorted(self.available)]

    async def wait_ready(self, index: int, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if not self.nodes[index].running:
                raise RuntimeError(f"node {index + 1} exited:\n{self.nodes[index].log_tail()}")
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with self.session.get(self.url(index) + "/readyz") as r:
                    if r.status == 200:
                        self.available.add(index)
                        return
            await asyncio.sleep(0.2)  # polling another process: no event to wait on
        raise TimeoutError(
            f"node {index + 1} not ready in {within}s:\n{self.nodes[index].log_tail()}"
        )

    async def start(self, count: int) -> None:
        self.write_members(list(range(count)))
        for i in range(count):
            await self.nodes[i].start()
        await asyncio.gather(*(self.wait_ready(i) for i in range(count)))

    async def add(self, index: int) -> None:
        """Scale up: list the node, start it, wait until it is ready."""
        self.write_members([*self.members, index])
        await self.nodes[index].start()
        await self.wait_ready(index)

    async def remove(self, index: int) -> None:
        """Scale down: SIGTERM (graceful leave), then take it out of the peers file."""
        self.available.discard(index)
        await self.nodes[index].stop(grace=40.0)
        self.write_members([i for i in self.members if i != index])

    async def kill(self, index: int) -> None:
        """kill -9: no leave, no handoff."""
        self.available.discard(index)
        await self.nodes[index].kill(signal.SIGKILL)

    async def restart(self, index: int) -> None:
        """Rolling-restart step: SIGTERM, wait, start a fresh (empty) process, wait ready."""
        self.available.discard(index)
        await self.nodes[index].stop(grace=40.0)
        await self.nodes[index].start()
        await self.wait_ready(index)

    async def owner(self, key: str) -> int:
        async with self.session.get(self.endpoints()[0] + "/v1/owner", params={"key": key}) as r:
            peer = (await r.json())["owner"]
        return next(i for i, a in enumerate(self.addresses) if a.peer == peer)

    async def close(self) -> None:
        for node in self.nodes:
            node.send_signal(signal.SIGKILL)
        for node in self.nodes:
            if node.process is not None:
                with contextlib.suppress(Exception):
                    await node.wait(10)
        if self._session is not None:
            await self._session.close()


@dataclass
class HitLoad:
    """Clients sending hits to random available nodes; every outcome counted per key."""

    cluster: RateLimitCluster
    keys: list[str]
    limit: int
    period: float = 600.0
    clients: int = 4
    pause: float = 0.02
    admitted: Counter[str] = field(default_factory=Counter)
    denied: Counter[str] = field(default_factory=Counter)
    fail_closed: Counter[str] = field(default_factory=Counter)
    unknown: Counter[str] = field(default_factory=Counter)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def body(self, key: str, cost: int = 1) -> dict[str, object]:
        return {
            "key": key,
            "limit": self.limit,
            "period": self.period,
            "algorithm": "fixed_window",
            "cost": cost,
        }

    def start(self, duration: float) -> None:
        self._stop.clear()
        deadline = time.monotonic() + duration
        self._tasks = [
            asyncio.get_running_loop().create_task(self._client(c, deadline))
            for c in range(self.clients)
        ]

    async def _client(self, c: int, deadline: float) -> None:
        rng = random.Random(c)
        n = 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            key = self.keys[(c + n) % len(self.keys)]
            n += 1
            urls = self.cluster.endpoints()
            if not urls:
                await asyncio.sleep(0.1)
                continue
            try:
                async with self.cluster.session.post(
                    rng.choice(urls) + "/v1/hit", json=self.body(key)
                ) as r:
                    if r.status != 200:
                        self.unknown[key] += 1
                    else:
                        d = await r.json()
                        if d["allowed"]:
                            self.admitted[key] += 1
                        elif d["source"] == "fail-closed":
                            self.fail_closed[key] += 1
                        else:
                            self.denied[key] += 1
            except (TimeoutError, aiohttp.ClientError):
                self.unknown[key] += 1
            await asyncio.sleep(self.pause)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def until_used(self, fraction: float, within: float = 60.0) -> None:
        """Wait until the load has admitted ``fraction`` of the total budget."""
        target = fraction * self.limit * len(self.keys)
        deadline = time.monotonic() + within
        while sum(self.admitted.values()) < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {sum(self.admitted.values())} admitted in {within}s")
            await asyncio.sleep(0.1)

    async def until_exhausted(self, within: float = 80.0) -> None:
        """Wait until the owners refused hits of every key (each limit reached)."""
        deadline = time.monotonic() + within
        while any(self.denied[k] < 5 for k in self.keys):
            if time.monotonic() > deadline:
                raise TimeoutError(f"limits not all reached in {within}s: {dict(self.admitted)}")
            await asyncio.sleep(0.1)

    async def recorded(self, key: str) -> int:
        """What the cluster has counted for ``key`` (a peek through an available node)."""
        async with self.cluster.session.post(
            self.cluster.endpoints()[0] + "/v1/hit", json=self.body(key, 0)
        ) as r:
            d = await r.json()
        return self.limit - int(d["remaining"])

    async def verdict(self) -> dict[str, object]:
        """Per-key figures and the over-admission against the exact expectation."""
        per_key = {}
        for k in self.keys:
            per_key[k] = {
                "admitted": self.admitted[k],
                "recorded": await self.recorded(k),
                "unknown": self.unknown[k],
                "fail_closed": self.fail_closed[k],
                "denied": self.denied[k],
            }
        stats = {}
        for i in sorted(self.cluster.available):
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with self.cluster.session.get(self.cluster.url(i) + "/cluster") as r:
                    stats[f"n{i + 1}"] = (await r.json())["stats"]
        over = max(0, max(v["admitted"] - self.limit for v in per_key.values()))  # type: ignore[operator]
        lost = sum(max(0, v["admitted"] - v["recorded"]) for v in per_key.values())  # type: ignore[operator]
        return {
            "per_key": per_key,
            "limit": self.limit,
            "admitted_total": sum(self.admitted.values()),
            "expected_total": self.limit * len(self.keys),
            "over_admission_max": over,
            "over_admission_pct": round(100.0 * over / self.limit, 2),
            "admitted_not_recorded": lost,
            "unknown_outcomes": sum(self.unknown.values()),
            "fail_closed": sum(self.fail_closed.values()),
            "node_stats": stats,
        }
