"""``tools/bench ratelimit``: peer-ring-rate-limiter vs ``limits`` + Redis (and Gubernator).

Runs, on the same workload (``--keys`` keys, a limit of ``--limit`` per second each, closed
loops of ``--concurrency`` hits in flight per process, ``--duration`` measured seconds after
``--warmup``):

1. *local*: one process, one node (replication 1): every decision is local. Reports
   decisions/s and decisions per CPU-second (the "per core" figure), for the pure
   algorithm call (``decide``) and for ``RateLimiter.hit``.
2. *peer-ring*: ``--nodes`` node processes on loopback, for each ``--transport`` (grpc,
   tcp), each embedding a ``RateLimiter`` and generating load on random keys (the embedded
   deployment: about 1/N of the hits are local, the rest forwarded in batches to their
   owner): owner mode at ``--replication`` for each of ``--algorithms``; ``--hot-keys`` hot
   keys (limit x100) in owner and global mode (decided locally from a copy, reconciled
   with the owner every 100 ms); owner mode at replication 1 (no copy, as Redis and
   Gubernator keep none); ``--moderate`` hits in flight on keys other nodes own (every
   decision forwarded: the latency case); the ``--max-batches`` / ``--batch-windows``
   settings asked for; and, for each of ``--rates``, an open loop at that fixed total
   rate, every hit forwarded, at ``--replication`` and at 1, next to a bare asyncio TCP
   round trip between two processes at the same rate (the machine's latency floor).
3. *limits + Redis*: a real ``redis-server`` and ``--nodes`` client processes running the
   ``limits.aio`` fixed-window and moving-window strategies (``async+redis://``, redis-py)
   on the same keys, with the same hits in flight.
4. *Gubernator v2* (``benchlib.ratelimit_gubernator``), when ``tools/gubernator-test-env``
   has built it: ``--nodes`` instances, one Python client process per instance.

For each: decisions/s (sum over processes), latency p50/p99 of one decision, errors, and CPU
per decision (the client/node processes' CPU, plus redis-server's or the Gubernator
servers', over the measured window, divided by the decisions); for the peer-ring cluster
runs also hits per forwarded batch, states per replication message and requests between
nodes per 1,000 decisions (``messages_per_1k``, whole run; the replicas' relayed
decisions included) and the share of forwarded hits whose decision the key's other
replica sent (``relayed_pct``). ``--profile`` writes a
cProfile (CPU time) of the local run and of node 0 of each cluster run. Speed is never
pass/fail: the exit status is non-zero only when a run could not be made. The children's
side is ``benchlib.ratelimit_load``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
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
from benchlib.ratelimit_load import EXTRA_SRC, PREFIX


# ------------------------------------------------------------------ parent
async def spawn(spec: dict[str, Any], log: Path) -> asyncio.subprocess.Process:
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([*(str(p) for p in EXTRA_SRC), env["PYTHONPATH"]])
    code = (
        "import json,sys; from benchlib.ratelimit_load import child; child(json.loads(sys.argv[1]))"
    )
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
        "core_gc": args.core_gc,
        "arrivals": args.arrivals,
        "aligned": args.aligned,
        "fresh_gc": args.fresh_gc,
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
            if args.replication != 1 and not args.smoke:
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
            if not args.smoke:
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
            if args.only_extra or args.trace:
                runs = []
            # Open loop at fixed total rates, every hit forwarded: forwarded latency at a
            # load that does not depend on the latency itself (closed loops do).
            for rate in args.rates or ([300.0] if args.trace else []):
                for repl in dict.fromkeys((args.replication, 1)):
                    runs.append(
                        {
                            "algorithm": "fixed_window",
                            "mode": "owner",
                            "keys": keys,
                            "limit": args.limit,
                            "forwarded_only": True,
                            "rate": rate / args.nodes,
                            "replication": repl,
                            # Traced: more keys (made by the children: argv is bounded),
                            # so that a key is rarely hit twice.
                            **({"trace": True, "key_count": args.trace_keys} if args.trace else {}),
                        }
                    )
            if args.trace:
                swept = []
            # --batch-windows, then --max-batches: each value at both concurrencies and
            # at each open-loop rate.
            else:
                swept = [("batch_window", w) for w in args.batch_windows]
                swept += [("max_batches", b) for b in args.max_batches]
                swept += [("light", b) for b in args.light_in_flight]
                swept += [("relay", b) for b in args.relay]
            for setting, value in swept:
                for conc in (args.concurrency, args.moderate):
                    runs.append(
                        {
                            "algorithm": "fixed_window",
                            "mode": "owner",
                            "keys": keys,
                            "limit": args.limit,
                            "concurrency": conc,
                            "forwarded_only": conc == args.moderate,
                            setting: value,
                        }
                    )
                runs += [
                    {
                        "algorithm": "fixed_window",
                        "mode": "owner",
                        "keys": keys,
                        "limit": args.limit,
                        "forwarded_only": True,
                        "rate": rate / args.nodes,
                        setting: value,
                    }
                    for rate in args.rates
                ]
            for r in runs:
                rows.append(await cluster_run(args, base, workdir, transport, r))
        for rate in args.rates or ([300.0] if args.trace else []):
            rows.append(await floor_run(args, base, workdir, rate))
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
            run.get("light", "d"),
            f"rate{run['rate']:g}" if run.get("rate") else "closed",
        )
    )
    procs = []
    for i, p in enumerate(peers):
        child_spec = {**spec, "seed": i, "me": p}
        if args.profile and i == 0:
            child_spec["profile_path"] = str(args.profile_dir / f"node0-{tag}.prof")
        if run.get("trace"):
            child_spec["trace_path"] = str(workdir / f"trace-{tag}-{i}.json")
        procs.append(await spawn(child_spec, workdir / f"node-{tag}-{i}.log"))
    res = await collect(procs, stop_at - time.time() + 60)
    traced = None
    if run.get("trace"):
        from benchlib.ratelimit_trace import HitTrace, breakdown

        trace = HitTrace()
        for i in range(len(peers)):
            trace.merge_file(workdir / f"trace-{tag}-{i}.json")
        traced = breakdown(trace)
    name = f"peer-ring {args.nodes} nodes R{replication} {transport} {run['mode']} mode"
    if run["keys"] is not base["keys"]:
        name += f", {len(run['keys'])} hot keys"
    if run.get("forwarded_only"):
        name += ", forwarded hits only"
    if run.get("rate"):
        name += f", open loop {run['rate'] * args.nodes:g} hits/s"
    else:
        name += f", c{spec['concurrency']}"
    if run.get("trace"):
        name += ", traced"
    if run.get("batch_window"):
        name += f", batch window {run['batch_window'] * 1000:g} ms"
    if "max_batches" in run:
        name += f", max batches in flight {run['max_batches'] or 'unbounded'}"
    if "light" in run:
        name += f", light_in_flight {run['light'] or 'off'}"
    if "relay" in run:
        name += f", relay_max_batch {run['relay']}" if run["relay"] else ", relay off"
    row = summarize(name, res, args.duration)
    batches = sum(r["stats"]["batches"] for r in res)
    row["mean_forward_batch"] = (
        round(sum(r["stats"]["forwarded"] for r in res) / batches, 1) if batches else 0
    )
    state_batches = sum(r["stats"].get("state_batches", 0) for r in res)
    row["mean_state_batch"] = (
        round(
            sum(
                r["stats"].get("mean_state_batch", 0) * r["stats"].get("state_batches", 0)
                for r in res
            )
            / state_batches,
            1,
        )
        if state_batches
        else 0
    )
    # Requests between nodes (each answered) per 1,000 decisions, over the whole run:
    # forwarded batches plus replication messages (states riding on forwarded batches or
    # sent with the answers need none) plus the replicas' relayed decisions.
    decided = sum(r["stats"].get("allowed", 0) + r["stats"].get("denied", 0) for r in res)
    requests = batches + state_batches + sum(r["stats"].get("relay_messages", 0) for r in res)
    row["messages_per_1k"] = round(1000 * requests / decided, 1) if decided else 0
    relayed = sum(r["stats"].get("relayed", 0) for r in res)
    if relayed:
        # Share of the forwarded hits whose decision the key's other replica sent.
        fwd = sum(r["stats"].get("forwarded", 0) for r in res)
        row["relayed_pct"] = round(100 * relayed / fwd, 1) if fwd else 0
    # Forwarded hits (and replicated states) that found every batch slot to their node
    # busy: they waited for a round trip to end before leaving (nodes that count them).
    forwarded = sum(r["stats"].get("forwarded", 0) for r in res)
    if forwarded and all("hits_waited" in r["stats"] for r in res):
        waited = sum(r["stats"]["hits_waited"] for r in res)
        row["hits_waited_pct"] = round(100 * waited / forwarded, 1)
        states = sum(
            r["stats"].get("mean_state_batch", 0) * r["stats"].get("state_batches", 0) for r in res
        )
        if states:
            row["states_waited_pct"] = round(
                100 * sum(r["stats"]["states_waited"] for r in res) / states, 1
            )
    if traced is not None:
        row["trace"] = traced
    return {**row, "algorithm": run["algorithm"], "transport": transport}


async def floor_run(
    args: argparse.Namespace, base: dict[str, Any], workdir: Path, rate: float
) -> dict[str, Any]:
    """The machine's floor for the latency target: bare asyncio TCP round trips between
    two processes at ``rate`` per second (no peer-ring, no rate limiter)."""
    hosts = ["127.0.0.1", "127.0.0.2"]
    port = free_port(hosts)
    start_at = time.time() + 3.0
    stop_at = start_at + args.warmup + args.duration + 3.0
    common = {**base, "host": hosts[1], "port": port, "start_at": start_at, "stop_at": stop_at}
    echo = await spawn({**common, "kind": "echo"}, workdir / "floor-echo.log")
    ping = await spawn({**common, "kind": "ping", "rate": rate, "seed": 0}, workdir / "floor.log")
    res = await collect([ping, echo], stop_at - time.time() + 60)
    row = summarize(f"bare asyncio TCP round trip (floor), open loop {rate:g}/s", res[:1], 1.0)
    return {**row, "decisions_per_s": round(res[0]["decisions"] / args.duration, 1)}


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
        "mean_state_batch",
        "messages_per_1k",
        "relayed_pct",
        "hits_waited_pct",
        "states_waited_pct",
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
        "--rates",
        type=float,
        nargs="*",
        default=[],
        help="also run open loops at these total hits/s, every hit forwarded, at --replication"
        " and 1 (the forwarded-latency target at a fixed, moderate load)",
    )
    p.add_argument(
        "--batch-windows",
        type=float,
        nargs="*",
        default=[],
        help="also run owner mode with these batch_window values (seconds), heavy and moderate"
        " (and open loop at each of --rates)",
    )
    p.add_argument(
        "--max-batches",
        type=int,
        nargs="*",
        default=[],
        help="also run owner mode with these max_batches_in_flight values (0: unbounded),"
        " heavy and moderate (and open loop at each of --rates)",
    )
    p.add_argument(
        "--light-in-flight",
        type=int,
        nargs="*",
        default=[],
        help="also run owner mode with these light_in_flight values (0: off), heavy and"
        " moderate (and open loop at each of --rates)",
    )
    p.add_argument(
        "--relay",
        type=int,
        nargs="*",
        default=[],
        help="also run owner mode with relay off (0) or relay_max_batch n (n > 0): the key's"
        " other replica answers a forwarder that is not a replica, for batches of at most n"
        " hits; heavy and moderate (and open loop at each of --rates)",
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
    p.add_argument(
        "--only-extra",
        action="store_true",
        help="of the cluster runs, only those --rates, --batch-windows, --max-batches,"
        " --light-in-flight and --relay add",
    )
    p.add_argument(
        "--core-gc",
        action="store_true",
        help="run the peer-ring processes with peer_ring.core.run(gc_threshold=20_000,"
        " gc_freeze_after_start=True), the core's opt-in collector settings for a host",
    )
    p.add_argument(
        "--trace",
        action="store_true",
        help="only the open loops at --rates (default 300/s), every hit forwarded, at"
        " --replication and 1, with a per-stage trace of each hit (benchlib.ratelimit_trace)"
        " and the floor",
    )
    p.add_argument(
        "--trace-keys", type=int, default=100_000, help="keys of the traced runs (100,000)"
    )
    p.add_argument(
        "--arrivals",
        choices=("thread", "timer"),
        default="thread",
        help="open loops: what starts each hit at its scheduled time: a thread that sleeps"
        " until then (default), or the loop's own timer, 1 ms resolution (rounds 1-7)",
    )
    p.add_argument(
        "--aligned",
        action="store_true",
        help="open loops: every process starts its hits at the same instants (rounds 1-7);"
        " default: each process's schedule is shifted by index/processes of an interval",
    )
    p.add_argument(
        "--fresh-gc",
        action="store_true",
        help="peer-ring processes start their load without a full collection first (rounds"
        " 1-7: the first one then fell inside the measured window); default: one gc.collect()"
        " after start",
    )
    p.add_argument("--smoke", action="store_true", help="tiny run: it starts and reports")
    p.add_argument("--json", type=Path, default=None, help="results file")
    args = p.parse_args(argv)
    if args.trace:
        args.no_local = args.no_redis = args.no_gubernator = True
    if args.smoke:
        # The four cluster runs on the first transport; no Gubernator (it may be unbuilt).
        args.duration, args.warmup, args.keys = 1.0, 0.5, 200
        args.transport, args.no_gubernator = args.transport[:1], True
    with tempfile.TemporaryDirectory(prefix="bench-ratelimit-") as tmp:
        try:
            result = asyncio.run(run(args, Path(tmp)))
        except (RuntimeError, TimeoutError) as exc:
            print(f"bench ratelimit: {exc}", file=sys.stderr)
            for log in sorted(Path(tmp).glob("*.log")):
                print(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}", file=sys.stderr)
            return 1
    print(table(result))
    for row in result["rows"]:
        if "trace" in row:
            from benchlib.ratelimit_trace import table as trace_table

            print("\n" + trace_table(row["system"], row["trace"]))
    out = args.json or REPO / "bench-results" / f"ratelimit-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nJSON: {out}")
    return 0
