"""``peer-ring-kv demo``: a node dies, no key is lost.

The demo starts a local cluster of ``serve`` processes (static discovery on one loopback
address, distinct ports), writes keys with replication 3 and write quorum 2 through the HTTP
API, SIGKILLs one node, reads every key with read quorum 2 through the survivors, restarts
the node, reads every key through it, and prints a table of what happened. With N=3, W=2,
R=2 every read quorum overlaps every write quorum (R + W > N), so one dead node can never
hide an acknowledged write: that is what the demo shows.

Exit status 0 when every step succeeded and no key was lost, 1 otherwise, 130 on Ctrl-C
(the nodes are stopped in every case).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

import aiohttp

from peer_ring.kv._local_cluster import (
    LocalCluster,
    NodeFailedError,
    allocate_addresses,
)
from peer_ring.kv._serve_config import is_loopback

REPLICATION = 3
QUORUM = 2
_CONCURRENCY = 16
_REQUEST_TIMEOUT = 10.0
_READY_TIMEOUT = 30.0
MAX_NODES = 9
MAX_KEYS = 100_000


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """Settings of one demo run.

    Attributes:
        nodes: cluster size (3..9).
        keys: number of keys written and read back.
        base_port: node ``i`` uses ports ``base_port + i`` (peers) and ``+ 1000`` (HTTP);
            ``None`` picks free ports.
        host: the loopback address every node binds.
    """

    nodes: int = 3
    keys: int = 100
    base_port: int | None = None
    host: str = "127.0.0.1"

    @classmethod
    def from_args(cls, nodes: int, keys: int, base_port: int | None, host: str) -> DemoOptions:
        """Validate command-line values.

        Raises:
            ValueError: a value out of range, with a message for the user.
        """
        if not 3 <= nodes <= MAX_NODES:
            raise ValueError(f"--nodes must be between 3 and {MAX_NODES}, got {nodes}")
        if not 1 <= keys <= MAX_KEYS:
            raise ValueError(f"--keys must be between 1 and {MAX_KEYS}, got {keys}")
        if base_port is not None and not 1024 <= base_port <= 65535 - 1000 - nodes:
            raise ValueError(
                f"--base-port must be between 1024 and {65535 - 1000 - nodes}, got {base_port}"
            )
        if not is_loopback(host):
            raise ValueError(f"--host must be a loopback address, got {host!r}")
        return cls(nodes, keys, base_port, host)


@dataclass(slots=True)
class Step:
    """One line of the final table."""

    name: str
    seconds: float = 0.0
    ok: int | None = None
    lost: int | None = None
    failed: int | None = None
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and not self.lost and not self.failed


@dataclass(slots=True)
class _Report:
    out: TextIO
    started: float = field(default_factory=time.monotonic)
    steps: list[Step] = field(default_factory=list)

    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:5.1f}s] {message}", file=self.out, flush=True)

    async def step(self, name: str, action: Callable[[Step], Awaitable[None]]) -> Step:
        step = Step(name)
        self.steps.append(step)
        self.say(f"{name} ...")
        begin = time.monotonic()
        try:
            await action(step)
        except (NodeFailedError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            step.error = f"{type(exc).__name__}: {exc}"
        finally:
            step.seconds = time.monotonic() - begin
        if step.error is not None:
            self.say(f"{name}: FAILED: {step.error}")
        else:
            self.say(f"{name}: done in {step.seconds:.2f}s{_counts(step)}")
        return step

    def table(self) -> str:
        rows = [("step", "time", "ok", "lost", "failed")]
        for s in self.steps:
            rows.append(
                (
                    s.name,
                    f"{s.seconds:.2f}s" if s.error is None else "FAILED",
                    _cell(s.ok),
                    _cell(s.lost),
                    _cell(s.failed),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = []
        for r in rows:
            lines.append(
                "  ".join(
                    r[i].ljust(widths[i]) if i == 0 else r[i].rjust(widths[i]) for i in range(5)
                )
            )
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _cell(value: int | None) -> str:
    return "-" if value is None else str(value)


def _counts(step: Step) -> str:
    parts = []
    if step.ok is not None:
        parts.append(f"{step.ok} ok")
    if step.lost:
        parts.append(f"{step.lost} LOST")
    if step.failed:
        parts.append(f"{step.failed} failed")
    return f" ({', '.join(parts)})" if parts else ""


def demo_keys(count: int) -> dict[str, bytes]:
    """The keys and values the demo writes."""
    return {f"demo:key:{i:05d}": f"value {i} written by the demo".encode() for i in range(count)}


async def _write_all(
    session: aiohttp.ClientSession, urls: Sequence[str], data: dict[str, bytes], step: Step
) -> None:
    semaphore = asyncio.Semaphore(_CONCURRENCY)
    problems: list[str] = []

    async def put(i: int, key: str, value: bytes) -> bool:
        # Spread the writes over every node: any node coordinates any key.
        url = f"{urls[i % len(urls)]}/kv/{key}"
        async with semaphore:
            try:
                async with session.put(
                    url, data=value, params={"replication": REPLICATION, "quorum": QUORUM}
                ) as response:
                    if response.status == 204:
                        return True
                    problems.append(f"PUT {key}: HTTP {response.status} {await response.text()}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                problems.append(f"PUT {key}: {type(exc).__name__}: {exc}")
            return False

    results = await asyncio.gather(*(put(i, k, v) for i, (k, v) in enumerate(data.items())))
    step.ok = sum(results)
    step.failed = len(results) - step.ok
    _show_problems(problems)


async def _read_all(
    session: aiohttp.ClientSession, urls: Sequence[str], data: dict[str, bytes], step: Step
) -> None:
    semaphore = asyncio.Semaphore(_CONCURRENCY)
    lost: list[str] = []
    problems: list[str] = []

    async def get(i: int, key: str, expected: bytes) -> None:
        url = f"{urls[i % len(urls)]}/kv/{key}"
        async with semaphore:
            try:
                async with session.get(url, params={"quorum": QUORUM}) as response:
                    body = await response.read()
                    if response.status == 200 and body == expected:
                        return
                    if response.status in (200, 404):
                        # Absent or another value: an acknowledged write is gone.
                        lost.append(f"GET {key}: HTTP {response.status} {body[:80]!r}")
                    else:
                        problems.append(f"GET {key}: HTTP {response.status} {body[:200]!r}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                problems.append(f"GET {key}: {type(exc).__name__}: {exc}")

    await asyncio.gather(*(get(i, k, v) for i, (k, v) in enumerate(data.items())))
    step.lost = len(lost)
    step.failed = len(problems)
    step.ok = len(data) - step.lost - step.failed
    _show_problems(lost + problems)


def _show_problems(problems: list[str], limit: int = 5) -> None:
    for line in problems[:limit]:
        print(f"         {line}", file=sys.stderr)
    if len(problems) > limit:
        print(f"         ... and {len(problems) - limit} more", file=sys.stderr)


async def demo(options: DemoOptions, out: TextIO = sys.stdout) -> int:
    """Run the demo scenario; returns the exit status (0: nothing lost, nothing failed)."""
    report = _Report(out)
    addresses = allocate_addresses(
        options.nodes, hosts=(options.host,), base_port=options.base_port
    )
    cluster = LocalCluster(
        addresses, serve_args=["--replication", str(REPLICATION), "--log-level", "warning"]
    )
    data = demo_keys(options.keys)
    victim = options.nodes - 1
    victim_node = cluster.nodes[victim]
    survivors = [n.address.url for n in cluster.nodes if n.index != victim]
    report.say(
        f"peer-ring-kv demo: {options.nodes} nodes, {options.keys} keys, "
        f"replication {REPLICATION}, write and read quorum {QUORUM}"
    )
    report.say(f"node logs: {cluster.log_dir}")
    ok = False
    try:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=_REQUEST_TIMEOUT)
        ) as session:

            async def start(step: Step) -> None:
                for node in cluster.nodes:
                    report.say(f"  {node.name}: peer {node.address.peer}, http {node.address.url}")
                await cluster.start(_READY_TIMEOUT)

            async def write(step: Step) -> None:
                await _write_all(session, [n.address.url for n in cluster.nodes], data, step)

            async def kill(step: Step) -> None:
                code = await victim_node.kill()
                report.say(f"  {victim_node.name} (pid {victim_node.pid}) exited with {code}")

            async def read_survivors(step: Step) -> None:
                await _read_all(session, survivors, data, step)

            async def restart(step: Step) -> None:
                await cluster.start_node(victim, _READY_TIMEOUT)

            async def read_restarted(step: Step) -> None:
                await _read_all(session, [victim_node.address.url], data, step)

            plan: list[tuple[str, Callable[[Step], Awaitable[None]]]] = [
                (f"start {options.nodes} nodes", start),
                (f"write {options.keys} keys (N={REPLICATION}, W={QUORUM})", write),
                (f"kill -9 {victim_node.name} ({victim_node.address.peer})", kill),
                (f"read {options.keys} keys via the survivors (R={QUORUM})", read_survivors),
                (f"restart {victim_node.name}", restart),
                (f"read {options.keys} keys via {victim_node.name} (R={QUORUM})", read_restarted),
            ]
            for name, action in plan:
                step = await report.step(name, action)
                if not step.passed:
                    break
            ok = all(s.passed for s in report.steps) and len(report.steps) == len(plan)
    finally:
        # Keep the evidence of a failed step; an interrupted run leaves nothing behind.
        cluster.keep_logs = any(not s.passed for s in report.steps)
        report.say("stopping the cluster ...")
        await cluster.close()
    print(file=out)
    print(report.table(), file=out)
    print(file=out)
    lost = sum(s.lost or 0 for s in report.steps)
    if ok:
        print(
            f"OK: every key readable ({options.keys}/{options.keys}) with {victim_node.name} "
            f"dead and after it came back: 0 lost, in {time.monotonic() - report.started:.1f}s.",
            file=out,
        )
        return 0
    print(
        f"FAILED: {lost} key(s) lost, "
        f"{sum(s.failed or 0 for s in report.steps)} operation(s) failed; "
        f"node logs kept in {cluster.log_dir}",
        file=out,
    )
    return 1


def run_demo(options: DemoOptions) -> int:
    """Run :func:`demo` on a fresh event loop; returns the exit status."""
    from peer_ring.core import run

    try:
        return run(demo(options))
    except KeyboardInterrupt:
        # asyncio.run cancelled the demo, whose `finally` stopped the nodes; the atexit hook
        # of the cluster module is the last resort for anything left.
        print("\ninterrupted: the cluster was stopped", file=sys.stderr)
        return 130
