"""``tools/bench``: peer-ring (embedded KVStore, N node processes) vs Redis, same workload.

What one invocation does, in order:

1. for each round (``--repeat``) and each concurrency: Redis (``redis-server`` started here,
   driven by N client processes with redis.asyncio), then every peer-ring configuration
   (N node processes on 127.0.0.1..N, each embedding a ``KVStore`` and the same load
   generator). Each run: start, prefill the keys, warm up, measure for ``--duration``.
2. ``--micro``: local get of an owned key; ``--memory``: 1,000,000 keys in one node.
3. A table on the terminal, the issue's targets, and a JSON document
   (default ``bench-results/<timestamp>.json``).

Speed is never a pass/fail criterion here (docs/benchmarks.md); the exit status is non-zero only
when the benchmark itself could not run (or, in ``--smoke``, measured no operation).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import _report, _suite, _trace
from benchlib._load import Workload
from benchlib._opcost import format_op_cost
from benchlib._procs import (
    INSTALL_REDIS_HINT,
    REPO,
    RedisServer,
    RunPlan,
    StartFailedError,
    WorkerFailedError,
    child_env,
    redis_server_binary,
    run_plan,
)
from benchlib._profile import analyze_cprofile, analyze_py_spy, format_profile
from benchlib._worker import PREFIX


def running_in_ci() -> bool:
    """Same rule as the repository's conftest: ``CI`` set to something truthy."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(
        prog="tools/bench",
        description="peer-ring (embedded KVStore cluster) vs Redis from Python, same workload.",
    )
    p.add_argument("--nodes", type=int, default=3, help="node (and Redis client) processes")
    p.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[64],
        help="operations in flight per process (several values: one run each)",
    )
    p.add_argument("--replication", type=int, default=1, help="replicas N per key")
    p.add_argument("--quorum", type=int, default=None, help="read/write quorum (default: N//2+1)")
    p.add_argument(
        "--matrix",
        action="store_true",
        help="the issue's matrix: concurrency 16 and 64 x {R1/Q1, R3/Q2} (+ Redis)",
    )
    p.add_argument(
        "--rate",
        type=float,
        nargs="+",
        default=None,
        help="open loop instead: these total ops/s (all processes together), one run each",
    )
    p.add_argument(
        "--suite",
        action="store_true",
        help="issue 23's matrix in one invocation: closed loop c16/c64/c256, open loop "
        "1k/3k/6k ops/s, 1/3/5 nodes, TCP (+ gRPC at c64), each with Redis",
    )
    p.add_argument(
        "--gc-threshold",
        type=int,
        default=0,
        help="host tuning, every process of both systems: gc.set_threshold(N) before the run "
        "(0: Python's default, 700)",
    )
    p.add_argument(
        "--gc-freeze",
        action="store_true",
        help="host tuning, every process of both systems: gc.freeze() after start-up "
        "(peer-ring: peer_ring.core.run(gc_freeze_after_start=True))",
    )
    p.add_argument(
        "--lockstep",
        action="store_true",
        help="open loop, both systems: every process starts its operations at the same "
        "instants (the schedule before 2026-12-07; default: the processes' schedules "
        "interleave, offset by 1/processes of an interval each)",
    )
    p.add_argument(
        "--read-fanout",
        choices=("quorum", "all"),
        default="quorum",
        help="peer-ring's PeerRingConfig.read_fanout: gets ask a quorum of replicas "
        "(default) or all N (the behaviour before issue 23's quorum reads)",
    )
    p.add_argument(
        "--node-config",
        nargs="+",
        default=[],
        metavar="FIELD=VALUE",
        help="PeerRingConfig fields of every node (A/B of a default), e.g. "
        "anti_entropy_interval=none probe_interval=5 (values: JSON, or none)",
    )
    p.add_argument(
        "--trace",
        action="store_true",
        help="open loop: trace every operation, GC, loop stall and sync step of every "
        "process, and attribute the operations slower than Redis's p99 (benchlib._trace)",
    )
    p.add_argument("--value-size", type=int, default=100, help="bytes per value")
    p.add_argument("--keys", type=int, default=10_000, help="key space size")
    p.add_argument("--read-ratio", type=float, default=0.5, help="fraction of gets (0..1)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring")
    p.add_argument("--repeat", type=int, default=1, help="rounds (ratios pair runs per round)")
    p.add_argument("--max-ops", type=int, default=20_000_000, help="op bound per process")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--request-timeout", type=float, default=2.0, help="peer-ring seconds")
    p.add_argument(
        "--late-grace",
        type=float,
        default=1.0,
        help="an operation pending longer than --request-timeout plus this many seconds is "
        "counted 'late' (pending past its deadline; must be 0)",
    )
    p.add_argument(
        "--single-ip",
        action="store_true",
        help="all nodes on 127.0.0.1 with distinct ports (default: 127.0.0.x)",
    )
    p.add_argument(
        "--transport",
        nargs="+",
        choices=("grpc", "tcp"),
        default=["grpc"],
        help="peer transport(s); several run in the same invocation (e.g. grpc tcp)",
    )
    p.add_argument("--no-redis", action="store_true", help="skip the Redis baseline")
    p.add_argument("--no-load", action="store_true", help="skip the cluster runs")
    p.add_argument(
        "--redis-only", action="store_true", help="only the Redis baseline (no peer-ring runs)"
    )
    p.add_argument("--micro", action="store_true", help="local-get micro-benchmark")
    p.add_argument("--memory", action="store_true", help="1M-key memory test")
    p.add_argument(
        "--op-cost",
        action="store_true",
        help="CPU and Python calls per operation, all nodes in one process (R1/Q1, R3/Q2)",
    )
    p.add_argument("--op-cost-ops", type=int, default=20_000, help="operations per --op-cost run")
    p.add_argument("--memory-keys", type=int, default=1_000_000)
    p.add_argument("--full", action="store_true", help="--matrix --micro --memory")
    p.add_argument("--no-uvloop", action="store_true", help="plain asyncio (for comparison)")
    p.add_argument(
        "--profile",
        choices=("py-spy", "cprofile"),
        default=None,
        help="profile peer-ring node 0 during the window (py-spy: sampling, no overhead)",
    )
    p.add_argument("--json", type=Path, default=None, help="results file")
    p.add_argument(
        "--keep-logs", action="store_true", help="keep the processes' logs after a good run"
    )
    p.add_argument("--markdown", type=Path, default=None, help="also write Markdown tables")
    p.add_argument("--smoke", action="store_true", help="tiny run (~5 s): it starts and reports")
    opts = p.parse_args(argv)
    if opts.full:
        opts.matrix = opts.micro = opts.memory = True
    if opts.smoke:
        opts.concurrency = [8]
        opts.keys = 1000
        opts.warmup = 0.3
        opts.duration = 1.0
        opts.replication, opts.quorum = 3, 2
        opts.micro = opts.memory = True
        opts.memory_keys = 20_000
    for name in ("nodes", "replication", "keys", "value_size", "repeat", "max_ops"):
        if getattr(opts, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0.0 <= opts.read_ratio <= 1.0:
        p.error("--read-ratio must be within 0..1")
    if opts.duration <= 0 or opts.warmup < 0:
        p.error("--duration must be > 0 and --warmup >= 0")
    if opts.quorum is None:
        opts.quorum = opts.replication // 2 + 1
    if not 1 <= opts.quorum <= opts.replication:
        p.error("--quorum must be within 1..replication")
    if opts.rate and any(rate <= 0 for rate in opts.rate):
        p.error("--rate must be > 0")
    if opts.replication > opts.nodes and not (opts.matrix or opts.suite):
        p.error("--replication cannot exceed --nodes")
    opts.node_config = _node_config(p, opts.node_config)
    return opts


def _node_config(p: argparse.ArgumentParser, items: list[str]) -> dict[str, Any]:
    """``FIELD=VALUE`` pairs checked against PeerRingConfig (values parsed as JSON)."""
    from peer_ring.core import PeerRingConfig

    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or name not in PeerRingConfig.__dataclass_fields__:
            p.error(f"--node-config: {item!r} is not FIELD=VALUE of a PeerRingConfig field")
        try:
            out[name] = None if text.lower() == "none" else json.loads(text)
        except json.JSONDecodeError:
            out[name] = text
    try:
        PeerRingConfig(**out)
    except Exception as exc:
        p.error(f"--node-config: {exc}")
    return out


async def _run_micro(kind: str, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run ``benchlib._micro`` in a fresh process (bounded, killed on failure)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchlib._opcost" if kind == "opcost" else "benchlib._micro",
        json.dumps({"kind": kind, **spec}),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=child_env(),
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        raise WorkerFailedError(f"{kind} benchmark did not finish within {timeout:g}s") from None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    for line in out.decode(errors="replace").splitlines():
        if line.startswith(PREFIX):
            result: dict[str, Any] = json.loads(line[len(PREFIX) :])
            result.pop("event", None)
            return result
    raise WorkerFailedError(
        f"{kind} benchmark failed (exit {proc.returncode}):\n{err.decode(errors='replace')[-3000:]}"
    )


async def _run_with_retries(
    plan: RunPlan, workdir: Path, redis: RedisServer | None, attempts: int = 3
) -> dict[str, Any]:
    """``run_plan``, retried (bounded) when it failed before measuring anything."""
    for attempt in range(1, attempts + 1):
        try:
            return await run_plan(plan, workdir, redis)
        except StartFailedError as exc:
            if attempt == attempts:
                raise
            first = str(exc).splitlines()[0]
            print(f"  start failed ({first}); retrying with fresh ports", file=sys.stderr)
    raise AssertionError("unreachable")


def _attach_profile(raw: dict[str, Any]) -> None:
    files = raw["profile_files"]
    try:
        if "py-spy" in files:
            raw["profile"] = {**analyze_py_spy(Path(files["py-spy"])), "file": files["py-spy"]}
        elif "cprofile" in files:
            raw["profile"] = {
                **analyze_cprofile(Path(files["cprofile"])),
                "file": files["cprofile"],
            }
    except Exception as exc:  # a broken profile must not lose the measurements
        raw["profile"] = {"error": repr(exc)}


async def _run_case(
    opts: argparse.Namespace,
    case: _suite.Case,
    round_: int,
    workdir: Path,
    redis: RedisServer | None,
    runs: list[dict[str, Any]],
) -> None:
    """Redis, then every peer-ring configuration, under one load shape."""
    workload = Workload(
        keys=opts.keys,
        value_size=opts.value_size,
        read_ratio=opts.read_ratio,
        concurrency=case.concurrency,
        max_ops=opts.max_ops,
        seed=opts.seed,
        rate=case.rate / case.processes,
        overdue_s=opts.request_timeout + opts.late_grace,
        stagger=not opts.lockstep,
    ).__dict__
    uvloop = not opts.no_uvloop
    plans = []
    if redis is not None:
        plans.append(
            RunPlan(
                "redis",
                case.processes,
                workload,
                opts.warmup,
                opts.duration,
                uvloop=uvloop,
                extra={
                    "gc_threshold": opts.gc_threshold,
                    "gc_freeze": opts.gc_freeze,
                    "trace": opts.trace and case.rate > 0,
                },
            )
        )
    for r, q, transport in case.configs:
        plans.append(
            RunPlan(
                "peer-ring",
                case.processes,
                workload,
                opts.warmup,
                opts.duration,
                replication=r,
                quorum=q,
                single_ip=opts.single_ip,
                uvloop=uvloop,
                request_timeout=opts.request_timeout,
                profile=opts.profile,
                extra={
                    "transport": transport,
                    "gc_threshold": opts.gc_threshold,
                    "gc_freeze": opts.gc_freeze,
                    "read_fanout": opts.read_fanout,
                    "node_config": opts.node_config,
                    "trace": opts.trace and case.rate > 0,
                },
            )
        )
    if round_ % 2 and redis is not None:
        # A shared machine's load drifts within a case: odd rounds measure Redis last, so
        # that with --repeat 2 neither system always gets the earlier minutes.
        plans = plans[1:] + plans[:1]
    traced: list[tuple[dict[str, Any], list[str]]] = []
    for plan in plans:
        print(
            f"running {_report.label(plan)} ({case.processes} processes, "
            f"{opts.warmup:g}s warm-up + {opts.duration:g}s)...",
            flush=True,
        )
        raw = await _run_with_retries(plan, workdir, redis)
        _attach_profile(raw)
        summary = _report.summarize(raw)
        if raw["traces"]:
            traced.append((summary, raw["traces"]))
        summary["round"] = round_
        summary["rounds"] = opts.repeat
        runs.append(summary)
    # Both systems' slow operations against the same bar: the Redis run's p99.
    redis_p99 = next((s["p99_ms"] for s, _ in traced if s["system"] == "redis"), 0.0)
    for summary, paths in traced:
        threshold = redis_p99 or summary["p99_ms"]
        summary["trace"] = _trace.attribute(_trace.load(paths), threshold)
        print(_trace.describe(summary["label"], summary["trace"]), flush=True)


async def _main(opts: argparse.Namespace) -> int:
    started = time.time()
    use_redis = not opts.no_redis
    if use_redis and redis_server_binary() is None:
        if opts.smoke and not running_in_ci():
            print(f"tools/bench: {INSTALL_REDIS_HINT}\n  -> skipping the Redis part (not in CI)")
            use_redis = False
        else:
            why = "CI is set: a missing baseline is an error" if running_in_ci() else ""
            print(f"tools/bench: {INSTALL_REDIS_HINT}. {why}", file=sys.stderr)
            return 2
    runs: list[dict[str, Any]] = []
    micro: dict[str, Any] | None = None
    memory: dict[str, Any] | None = None
    op_cost: dict[str, Any] | None = None
    redis: RedisServer | None = None
    uvloop = not opts.no_uvloop
    workdir = Path(tempfile.mkdtemp(prefix="peer-ring-bench-"))
    try:
        if use_redis:
            redis = RedisServer(workdir)
            await redis.start()
            print(f"redis-server {redis.version} on {redis.host}:{redis.port}")
        if not opts.no_load:
            for round_ in range(opts.repeat):
                for case in _suite.cases(opts):
                    await _run_case(opts, case, round_, workdir, redis, runs)
        small = opts.smoke
        jobs: dict[str, Any] = {}
        if opts.micro:
            jobs["micro"] = _run_micro(
                "micro",
                {
                    "replications": [1, 3],
                    "keys": 3000 if small else 30_000,
                    "value_size": opts.value_size,
                    "timeit_number": 500,
                    "timeit_repeat": 20 if small else 400,
                    "batches": 50 if small else 2000,
                    "calls": 5000 if small else 200_000,
                    "uvloop": uvloop,
                },
                timeout=300,
            )
        if opts.memory:
            spec: dict[str, Any] = {
                "count": opts.memory_keys,
                "value_size": opts.value_size,
                "uvloop": uvloop,
            }
            if redis is not None:
                spec.update(redis_host=redis.host, redis_port=redis.port)
            jobs["memory"] = _run_micro("memory", spec, timeout=600)
        if opts.op_cost:
            jobs["opcost"] = _run_micro(
                "opcost",
                {
                    "configs": [[1, 1], [3, 2]],
                    "transport": opts.transport[-1],
                    "keys": opts.keys,
                    "value_size": opts.value_size,
                    "concurrency": 64,
                    "ops": 2000 if small else opts.op_cost_ops,
                    "profile_ops": 1000 if small else 5000,
                    "uvloop": uvloop,
                    "read_fanout": opts.read_fanout,
                },
                timeout=600,
            )
        titles = {
            "opcost": "the per-operation cost (one process)",
            "micro": "the local-get micro-benchmark",
            "memory": f"the memory test ({opts.memory_keys:,} keys)",
        }
        done: dict[str, Any] = {}
        if small and jobs:
            # --smoke only checks that everything runs: overlap the two to save seconds.
            print(f"running {' and '.join(titles[name] for name in jobs)}...", flush=True)
            done = dict(zip(jobs, await asyncio.gather(*jobs.values()), strict=True))
        for name, job in jobs.items():
            if name not in done:
                # Measured one after the other: each must have the machine to itself.
                print(f"running {titles[name]}...", flush=True)
                done[name] = await job
        micro = done.get("micro")
        memory = done.get("memory")
        op_cost = done.get("opcost")
    except WorkerFailedError as exc:
        raise WorkerFailedError(f"{exc}\n(all logs kept in {workdir})") from None
    finally:
        if redis is not None:
            await redis.stop()

    comparisons = _report.compare(runs)
    goals = _report.targets(runs, comparisons, micro, memory, opts.nodes)
    goals23 = _suite.targets(runs, comparisons)
    document = {
        "tool": "tools/bench",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "elapsed_s": round(time.time() - started, 1),
        "argv": sys.argv[1:],
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()},
        "machine": {**_report.machine_info(), "redis_server": redis.version if redis else None},
        "runs": runs,
        "comparisons": comparisons,
        "micro": micro,
        "memory": memory,
        "op_cost": op_cost,
        "targets": goals,
        "targets_issue_23": goals23,
    }
    path = opts.json or REPO / "bench-results" / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    # Written first: a problem while printing must not lose the measurements.
    _report.write_json(path, document)
    print()
    if runs:
        print(_report.run_table(runs, comparisons))
        if comparisons:
            print()
            print(_report.ratio_summary(comparisons))
        for run in runs:
            if run.get("profile") and "layers" in run["profile"]:
                print(f"\n[{run['label']}] " + format_profile(run["profile"]))
    if micro:
        print()
        print(_report.micro_table(micro))
    if memory:
        print()
        print(_report.memory_table(memory))
    if op_cost:
        print()
        print(format_op_cost(op_cost))
    if goals:
        print()
        print(_report.targets_table(goals))
    if goals23:
        print()
        print(_report.targets_table(goals23, "targets (issue 23):"))
    if opts.markdown:
        opts.markdown.parent.mkdir(parents=True, exist_ok=True)
        opts.markdown.write_text(_report.markdown(document))
    if opts.keep_logs or opts.profile:
        print(f"\nresults: {path}   (worker logs and profiles: {workdir})")
    else:
        # Logs only matter when something failed (then this line is never reached).
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"\nresults: {path}")
    if opts.smoke and (not runs or any(r["ops"] == 0 for r in runs)):
        print("tools/bench --smoke: a run measured no operation", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tools/bench``."""
    opts = parse_args(argv)
    try:
        return asyncio.run(_main(opts))
    except WorkerFailedError as exc:
        print(f"tools/bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
