"""``tools/bench ratelimit``: peer-ring-rate-limiter vs ``limits`` + Redis, one invocation.

Runs, on the same workload (``--keys`` keys, a limit of ``--limit`` per second each, closed
loops of ``--concurrency`` hits in flight per process, ``--duration`` measured seconds after
``--warmup``):

1. *local*: one process, one node (replication 1): every decision is local. Reports
   decisions/s and decisions per CPU-second (the "per core" figure), for the pure
   algorithm call (``decide``) and for ``RateLimiter.hit``.
2. *peer-ring*: ``--nodes`` node processes (real gRPC on loopback, replication
   ``--replication``), each embedding a ``RateLimiter`` and generating load on random keys
   (the embedded deployment: about 1/N of the hits are local, the rest forwarded in
   batches to their owner), for the fixed window and the sliding window log in owner mode;
   then ``--hot-keys`` hot keys (limit x100) in owner mode and in global mode (decided
   locally from a copy, reconciled with the owner every 100 ms).
3. *limits + Redis*: a real ``redis-server`` and ``--nodes`` client processes running the
   ``limits.aio`` fixed-window and moving-window strategies (``async+redis://``, redis-py)
   on the same keys.

For each: decisions/s (sum over processes), latency p50/p99 of one decision, errors, and CPU
per decision (the client/node processes' CPU, plus redis-server's for Redis, over the
measured window, divided by the decisions). Gubernator is not run: it needs its Go module
built and three instances managed, which this tool does not do. Speed is never pass/fail:
the exit status is non-zero only when a run could not be made.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import importlib.util
import json
import os
import pstats
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib._hist import Histogram
from benchlib._procs import (
    REPO,
    RedisServer,
    child_env,
    free_port,
    proc_cpu_seconds,
    redis_server_binary,
)

PREFIX = "BENCH-RATELIMIT "
#: Source folders the children need beyond child_env()'s (the rate limiter itself).
EXTRA_SRC = [REPO / "packages" / "peer-ring-rate-limiter" / "src"]


# ------------------------------------------------------------------ load (in a child)
class Recorder:
    """Decisions, errors and latencies of the measured window."""

    def __init__(self) -> None:
        self.decisions = 0
        self.allowed = 0
        self.errors = 0
        self.lat_ns: list[int] = []


async def closed_loop(
    hit: Any,
    keys: list[str],
    concurrency: int,
    start_at: float,
    warmup: float,
    duration: float,
    seed: int,
) -> dict[str, Any]:
    """``concurrency`` tasks calling ``await hit(key)`` back to back; measured window only.

    A hit decided locally completes without suspending, so each task yields to the loop
    every few hits (or one task would run alone); the window is judged per hit by the time.
    """
    rec = Recorder()
    rng = random.Random(seed)
    await asyncio.sleep(max(0.0, start_at - time.time()))
    measure_from = time.monotonic() + warmup
    stop_at = measure_from + duration
    cpu = {"start": 0.0, "end": 0.0}

    async def one() -> None:
        n = 0
        while True:
            now = time.monotonic()
            if now >= stop_at:
                if not cpu["end"]:
                    cpu["end"] = time.process_time()
                return
            measuring = now >= measure_from
            if measuring and not cpu["start"]:
                cpu["start"] = time.process_time()
            key = keys[rng.randrange(len(keys))]
            t0 = time.perf_counter_ns()
            try:
                ok = await hit(key)
            except Exception:  # counted as an error; the load goes on
                if measuring:
                    rec.errors += 1
                ok = None
            if measuring and ok is not None:
                rec.lat_ns.append(time.perf_counter_ns() - t0)
                rec.decisions += 1
                rec.allowed += bool(ok)
            n += 1
            if n % 16 == 0:
                await asyncio.sleep(0)

    await asyncio.gather(*(one() for _ in range(concurrency)))
    return {
        "decisions": rec.decisions,
        "allowed": rec.allowed,
        "errors": rec.errors,
        "cpu_s": cpu["end"] - cpu["start"],
        "hist": Histogram.from_ns(rec.lat_ns).to_json(),
    }


async def peer_ring_child(spec: dict[str, Any]) -> dict[str, Any]:
    from peer_ring.core import PeerRingConfig
    from peer_ring.discovery.static import StaticDiscovery
    from peer_ring.ratelimit import Limit, RateLimiter

    extra: dict[str, Any] = {}
    if "max_batches" in spec:  # 0: no bound
        extra["max_batches_in_flight"] = spec["max_batches"] or None
    rl = RateLimiter(
        discovery=StaticDiscovery(spec["peers"], self_address=spec["me"]),
        replication=spec["replication"],
        config=PeerRingConfig(down_after=None, transport=spec.get("transport", "grpc")),
        timeout=5.0,
        batch_window=spec.get("batch_window", 0.0),
        **extra,
    )
    await rl.start()
    await rl.node.wait_ready(60)
    limit = Limit(spec["limit"], 1.0, algorithm=spec["algorithm"])
    mode = spec.get("mode", "owner")
    keys = spec["keys"]
    if spec.get("forwarded_only"):
        # Only keys another node owns: every hit is forwarded (the latency target's case).
        keys = [k for k in keys if rl.node.preference_list(k.encode(), 1)[0] != spec["me"]]

    async def hit(key: str) -> bool:
        return (await rl.hit(key, limit, mode=mode)).allowed

    prof = _profiler(spec)
    try:
        out = await closed_loop(
            hit,
            keys,
            spec["concurrency"],
            spec["start_at"],
            spec["warmup"],
            spec["duration"],
            spec["seed"],
        )
        _dump(prof, spec)
        out["stats"] = rl.stats()
        # Stay up until every node is done: the others forward hits to this one.
        await asyncio.sleep(max(0.0, spec["stop_at"] - time.time()))
    finally:
        await rl.stop()
    return out


def _profiler(spec: dict[str, Any]) -> cProfile.Profile | None:
    """A running cProfile of this child when the parent asked for one (``--profile``)."""
    if not spec.get("profile_path"):
        return None
    # CPU time, not wall time: on a loaded machine a wall-clock profile charges the time
    # the process waited for a core to whatever call it was in (often a socket write).
    prof = cProfile.Profile(time.process_time)
    prof.enable()
    return prof


def _dump(prof: cProfile.Profile | None, spec: dict[str, Any]) -> None:
    if prof is None:
        return
    prof.disable()
    prof.dump_stats(spec["profile_path"])
    with open(spec["profile_path"] + ".txt", "w") as f:
        pstats.Stats(prof, stream=f).sort_stats("tottime").print_stats(40)


async def limits_child(spec: dict[str, Any]) -> dict[str, Any]:
    from limits import RateLimitItemPerSecond
    from limits.aio import strategies
    from limits.storage import storage_from_string

    storage = storage_from_string(spec["redis"], implementation="redispy")
    cls = {
        "fixed_window": strategies.FixedWindowRateLimiter,
        "sliding_window_log": strategies.MovingWindowRateLimiter,
    }[spec["algorithm"]]
    strategy = cls(storage)
    item = RateLimitItemPerSecond(spec["limit"])

    async def hit(key: str) -> bool:
        return bool(await strategy.hit(item, key))

    return await closed_loop(
        hit,
        spec["keys"],
        spec["concurrency"],
        spec["start_at"],
        spec["warmup"],
        spec["duration"],
        spec["seed"],
    )


async def local_child(spec: dict[str, Any]) -> dict[str, Any]:
    """One node alone: the pure algorithm, then ``RateLimiter.hit`` (all local)."""
    from peer_ring.core.testing import FixedDiscovery, MemoryNetwork
    from peer_ring.ratelimit import Limit, RateLimiter, decide

    limit = Limit(spec["limit"], 1.0, algorithm=spec["algorithm"])
    keys = spec["keys"]
    # Pure function: decisions per CPU second, no event loop involved.
    states: dict[str, Any] = {}
    n = 200_000
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        k = keys[i % len(keys)]
        states[k] = decide(states.get(k), limit, 1, t0 + i * 1e-6)[0]
    pure = {"per_s": n / (time.perf_counter() - t0), "per_cpu_s": n / (time.process_time() - c0)}
    me = "127.0.0.1:1"
    net = MemoryNetwork()
    rl = RateLimiter(FixedDiscovery(me, [me]), replication=1, transport=net.transport(me))
    await rl.start()
    await rl.node.wait_ready(10)

    async def hit(key: str) -> bool:
        return (await rl.hit(key, limit)).allowed

    prof = _profiler(spec)
    try:
        out = await closed_loop(
            hit,
            keys,
            spec["concurrency"],
            time.time(),
            spec["warmup"],
            spec["duration"],
            spec["seed"],
        )
        _dump(prof, spec)
    finally:
        await rl.stop()
    out["pure"] = pure
    return out


def child(spec: dict[str, Any]) -> None:
    """Entry point of a child process: run its part, print one JSON line."""
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    kind = spec["kind"]
    if kind == "gubernator":
        from benchlib.ratelimit_gubernator import gubernator_child

        out = asyncio.run(gubernator_child(spec, closed_loop))
        print(PREFIX + json.dumps(out), flush=True)
        return
    fn = {"peer-ring": peer_ring_child, "limits": limits_child, "local": local_child}[kind]
    out = asyncio.run(fn(spec))
    print(PREFIX + json.dumps(out), flush=True)


# ------------------------------------------------------------------ parent
async def spawn(spec: dict[str, Any], log: Path) -> asyncio.subprocess.Process:
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([*(str(p) for p in EXTRA_SRC), env["PYTHONPATH"]])
    code = "import json,sys; from benchlib.ratelimit import child; child(json.loads(sys.argv[1]))"
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        json.dumps(spec),
        stdout=asyncio.subprocess.PIPE,
        stderr=log.open("ab"),
        env=env,
        start_new_session=True,
    )


async def collect(procs: list[asyncio.subprocess.Process], within: float) -> list[dict[str, Any]]:
    async def one(p: asyncio.subprocess.Process) -> dict[str, Any]:
        assert p.stdout is not None
        out = await p.stdout.read()
        await p.wait()
        for line in out.decode(errors="replace").splitlines():
            if line.startswith(PREFIX):
                return json.loads(line[len(PREFIX) :])  # type: ignore[no-any-return]
        raise RuntimeError(f"a child exited ({p.returncode}) without a result")

    try:
        return await asyncio.wait_for(asyncio.gather(*(one(p) for p in procs)), within)
    finally:
        for p in procs:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)


def summarize(
    name: str, results: list[dict[str, Any]], duration: float, extra_cpu: float = 0.0
) -> dict[str, Any]:
    hist = Histogram()
    for r in results:
        hist.merge(Histogram.from_json(r["hist"]))
    decisions = sum(r["decisions"] for r in results)
    cpu = sum(r["cpu_s"] for r in results) + extra_cpu
    return {
        "system": name,
        "decisions_per_s": round(decisions / duration, 1),
        "allowed_ratio": round(sum(r["allowed"] for r in results) / decisions, 3)
        if decisions
        else 0,
        "errors": sum(r["errors"] for r in results),
        "p50_ms": round(hist.percentile(0.50) / 1e6, 3),
        "p99_ms": round(hist.percentile(0.99) / 1e6, 3),
        "cpu_us_per_decision": round(1e6 * cpu / decisions, 1) if decisions else None,
    }


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    keys = [f"user:{i}" for i in range(args.keys)]
    base = {
        "keys": keys,
        "limit": args.limit,
        "concurrency": args.concurrency,
        "warmup": args.warmup,
        "duration": args.duration,
    }
    rows: list[dict[str, Any]] = []
    if args.profile:
        args.profile_dir.mkdir(parents=True, exist_ok=True)
    # 1. local
    if not args.no_local:
        rows += await local_rows(args, base, workdir)
    algorithms = args.algorithms
    # 2. peer-ring cluster
    if not args.no_peer_ring:
        hot = [f"hot:{i}" for i in range(args.hot_keys)]
        for transport in args.transport:
            runs: list[dict[str, Any]] = [
                {"algorithm": a, "mode": "owner", "keys": keys, "limit": args.limit}
                for a in algorithms
            ]
            if args.hot_keys:
                runs += [
                    {"algorithm": "fixed_window", "mode": m, "keys": hot, "limit": args.limit * 100}
                    for m in ("owner", "global")
                ]
            if args.replication != 1:
                # No copy on another node, as limits + Redis and Gubernator keep none.
                runs.append(
                    {
                        "algorithm": "fixed_window",
                        "mode": "owner",
                        "keys": keys,
                        "limit": args.limit,
                        "replication": 1,
                    }
                )
            # Moderate load, every hit forwarded: the forwarded-latency target.
            runs.append(
                {
                    "algorithm": "fixed_window",
                    "mode": "owner",
                    "keys": keys,
                    "limit": args.limit,
                    "concurrency": args.moderate,
                    "forwarded_only": True,
                }
            )
            for window in args.batch_windows:
                for conc in (args.concurrency, args.moderate):
                    runs.append(
                        {
                            "algorithm": "fixed_window",
                            "mode": "owner",
                            "keys": keys,
                            "limit": args.limit,
                            "concurrency": conc,
                            "forwarded_only": conc == args.moderate,
                            "batch_window": window,
                        }
                    )
            for bound in args.max_batches:
                for conc in (args.concurrency, args.moderate):
                    runs.append(
                        {
                            "algorithm": "fixed_window",
                            "mode": "owner",
                            "keys": keys,
                            "limit": args.limit,
                            "concurrency": conc,
                            "forwarded_only": conc == args.moderate,
                            "max_batches": bound,
                        }
                    )
            for r in runs:
                rows.append(await cluster_run(args, base, workdir, transport, r))
    # 3. limits + Redis
    if not args.no_redis:
        if redis_server_binary() is None:
            rows.append({"system": "limits + Redis", "skipped": "redis-server not installed"})
        elif importlib.util.find_spec("limits") is None:
            rows.append({"system": "limits + Redis", "skipped": "`limits` is not installed"})
        else:
            redis = RedisServer(workdir)
            await redis.start()
            try:
                for algo in algorithms:
                    await redis.command(b"FLUSHALL")
                    start_at = time.time() + 4.0
                    procs = [
                        await spawn(
                            {
                                **base,
                                "kind": "limits",
                                "algorithm": algo,
                                "seed": i,
                                "redis": f"async+redis://{redis.host}:{redis.port}",
                                "start_at": start_at,
                            },
                            workdir / f"limits-{algo}-{i}.log",
                        )
                        for i in range(args.nodes)
                    ]
                    # redis-server's CPU over the measured window, sampled by the parent.
                    await asyncio.sleep(max(0.0, start_at + args.warmup - time.time()))
                    cpu0 = proc_cpu_seconds(redis.pid)
                    await asyncio.sleep(args.duration)
                    redis_cpu = proc_cpu_seconds(redis.pid) - cpu0
                    res = await collect(procs, 60)
                    row = summarize(
                        f"limits + Redis {redis.version} ({args.nodes} clients)",
                        res,
                        args.duration,
                        extra_cpu=redis_cpu,
                    )
                    rows.append({**row, "algorithm": algo, "redis_cpu_s": round(redis_cpu, 2)})
            finally:
                await redis.stop()
    # 4. Gubernator (optional: only when tools/gubernator-test-env has built it)
    if not args.no_gubernator:
        rows.append(await gubernator_row(args, base, workdir))
    params = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    return {"params": params, "rows": rows}


async def local_rows(
    args: argparse.Namespace, base: dict[str, Any], workdir: Path
) -> list[dict[str, Any]]:
    """The single-node run: ``RateLimiter.hit`` (all local) and ``decide()`` alone."""
    spec = {**base, "kind": "local", "seed": 1, "algorithm": "fixed_window"}
    if args.profile:
        spec["profile_path"] = str(args.profile_dir / "local.prof")
    local = (await collect([await spawn(spec, workdir / "local.log")], args.duration * 3 + 60))[0]
    pure = local["pure"]
    return [
        {
            **summarize("peer-ring local (1 node, in-process)", [local], args.duration),
            "algorithm": "fixed_window",
            "per_cpu_s": round(local["decisions"] / local["cpu_s"]) if local["cpu_s"] else None,
        },
        {
            "system": "peer-ring decide() (pure function)",
            "algorithm": "fixed_window",
            "decisions_per_s": round(pure["per_s"]),
            "per_cpu_s": round(pure["per_cpu_s"]),
        },
    ]


async def cluster_run(
    args: argparse.Namespace,
    base: dict[str, Any],
    workdir: Path,
    transport: str,
    run: dict[str, Any],
) -> dict[str, Any]:
    """One peer-ring cluster run: ``--nodes`` processes each embedding a limiter."""
    hosts = [f"127.0.0.{i + 1}" for i in range(args.nodes)]
    port = free_port(hosts)
    peers = [f"{h}:{port}" for h in hosts]
    start_at = time.time() + (2.0 if args.smoke else 6.0) + args.nodes
    stop_at = start_at + args.warmup + args.duration + 3.0
    spec = {**base, "kind": "peer-ring", "transport": transport, **run}
    replication = run.get("replication", args.replication)
    spec.update(peers=peers, replication=replication, start_at=start_at, stop_at=stop_at)
    tag = "-".join(
        str(x)
        for x in (
            transport,
            f"r{replication}",
            run["algorithm"],
            run["mode"],
            len(run["keys"]),
            spec["concurrency"],
            run.get("batch_window", 0),
            run.get("max_batches", "d"),
        )
    )
    procs = []
    for i, p in enumerate(peers):
        child_spec = {**spec, "seed": i, "me": p}
        if args.profile and i == 0:
            child_spec["profile_path"] = str(args.profile_dir / f"node0-{tag}.prof")
        procs.append(await spawn(child_spec, workdir / f"node-{tag}-{i}.log"))
    res = await collect(procs, stop_at - time.time() + 60)
    name = f"peer-ring {args.nodes} nodes R{replication} {transport} {run['mode']} mode"
    if run["keys"] is not base["keys"]:
        name += f", {len(run['keys'])} hot keys"
    if run.get("forwarded_only"):
        name += ", forwarded hits only"
    name += f", c{spec['concurrency']}"
    if run.get("batch_window"):
        name += f", batch window {run['batch_window'] * 1000:g} ms"
    if "max_batches" in run:
        name += f", max batches in flight {run['max_batches'] or 'unbounded'}"
    row = summarize(name, res, args.duration)
    batches = sum(r["stats"]["batches"] for r in res)
    row["mean_forward_batch"] = (
        round(sum(r["stats"]["forwarded"] for r in res) / batches, 1) if batches else 0
    )
    return {**row, "algorithm": run["algorithm"], "transport": transport}


async def gubernator_row(
    args: argparse.Namespace, base: dict[str, Any], workdir: Path
) -> dict[str, Any]:
    """Gubernator v2, ``--nodes`` instances, one Python client process per instance."""
    from benchlib.ratelimit_gubernator import GubernatorCluster, gubernator_binary

    name = f"Gubernator ({args.nodes} instances, HTTP API, {args.nodes} clients)"
    binary, version = gubernator_binary()
    if binary is None:
        return {"system": name, "skipped": "not built: run tools/gubernator-test-env"}
    if importlib.util.find_spec("aiohttp") is None:
        return {"system": name, "skipped": "aiohttp is not installed"}
    cluster = GubernatorCluster(binary, workdir, args.nodes)
    try:
        await cluster.start()
        start_at = time.time() + 4.0
        procs = [
            await spawn(
                {
                    **base,
                    "kind": "gubernator",
                    "algorithm": "token_bucket",
                    "seed": i,
                    "gubernator_http": cluster.http[i],
                    "start_at": start_at,
                },
                workdir / f"gubernator-client-{i}.log",
            )
            for i in range(args.nodes)
        ]
        await asyncio.sleep(max(0.0, start_at + args.warmup - time.time()))
        cpu0 = sum(proc_cpu_seconds(pid) for pid in cluster.pids)
        await asyncio.sleep(args.duration)
        server_cpu = sum(proc_cpu_seconds(pid) for pid in cluster.pids) - cpu0
        res = await collect(procs, 60)
    finally:
        await cluster.stop()
    row = summarize(
        name.replace("Gubernator", f"Gubernator {version}"),
        res,
        args.duration,
        extra_cpu=server_cpu,
    )
    return {**row, "algorithm": "token_bucket", "server_cpu_s": round(server_cpu, 2)}


def table(result: dict[str, Any]) -> str:
    cols = [
        "system",
        "algorithm",
        "decisions_per_s",
        "p50_ms",
        "p99_ms",
        "errors",
        "cpu_us_per_decision",
        "per_cpu_s",
        "mean_forward_batch",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in result["rows"]:
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/bench ratelimit", description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=3, help="node / Redis client processes (3)")
    p.add_argument("--replication", type=int, default=2, help="peer-ring state copies (2)")
    p.add_argument("--keys", type=int, default=10_000)
    p.add_argument("--hot-keys", type=int, default=10, help="keys of the hot-key runs (10)")
    p.add_argument("--limit", type=int, default=1000, help="hits per second per key (1000)")
    p.add_argument("--concurrency", type=int, default=64, help="hits in flight per process")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument(
        "--transport",
        nargs="+",
        choices=["grpc", "tcp"],
        default=["grpc", "tcp"],
        help="peer-ring transports to run (both)",
    )
    p.add_argument(
        "--moderate", type=int, default=4, help="hits in flight per process, latency runs (4)"
    )
    p.add_argument(
        "--batch-windows",
        type=float,
        nargs="*",
        default=[],
        help="also run owner mode with these batch_window values (seconds), heavy and moderate",
    )
    p.add_argument(
        "--max-batches",
        type=int,
        nargs="*",
        default=[],
        help="also run owner mode with these max_batches_in_flight values (0: unbounded)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="cProfile the local run and node 0 of each cluster run (files under --profile-dir)",
    )
    p.add_argument("--profile-dir", type=Path, default=REPO / "bench-results" / "ratelimit-prof")
    p.add_argument("--algorithms", nargs="+", default=["fixed_window", "sliding_window_log"])
    p.add_argument("--no-local", action="store_true", help="skip the single-node run")
    p.add_argument("--no-redis", action="store_true")
    p.add_argument(
        "--no-gubernator",
        action="store_true",
        help="skip Gubernator (it runs only when tools/gubernator-test-env has built it)",
    )
    p.add_argument("--no-peer-ring", action="store_true", help="skip the cluster runs")
    p.add_argument("--smoke", action="store_true", help="tiny run: it starts and reports")
    p.add_argument("--json", type=Path, default=None, help="results file")
    args = p.parse_args(argv)
    if args.smoke:
        args.duration, args.warmup, args.keys = 1.0, 0.5, 200
    with tempfile.TemporaryDirectory(prefix="bench-ratelimit-") as tmp:
        try:
            result = asyncio.run(run(args, Path(tmp)))
        except (RuntimeError, TimeoutError) as exc:
            print(f"bench ratelimit: {exc}", file=sys.stderr)
            for log in sorted(Path(tmp).glob("*.log")):
                print(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}", file=sys.stderr)
            return 1
    print(table(result))
    out = args.json or REPO / "bench-results" / f"ratelimit-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nJSON: {out}")
    return 0
