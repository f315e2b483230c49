"""Aggregating the processes' results, checking the issue's targets, and the output.

Aggregation rules (the same for both systems, so the ratio compares like with like):

- ops/s = operations completed inside the shared measurement window, summed over the
  processes, divided by the window's length;
- percentiles come from the merged histograms of all processes (~1% resolution);
- CPU per op = CPU seconds (user + system, all threads) of every process of the system
  during the window -- the node processes for peer-ring, the client processes *plus*
  ``redis-server`` for Redis -- divided by the operations;
- "other load" = the machine's busy CPU during the window minus ours: how much the
  neighbours on this shared machine took (the numbers are only comparable when it is low).
"""

from __future__ import annotations

import json
import platform
import statistics
from pathlib import Path
from typing import Any

from benchlib._hist import Histogram
from benchlib._procs import RunPlan

# The targets (3 nodes, 64 in flight per node).
TARGET_R1_RATIO = 3.0
TARGET_R1_P99_MS = 5.0
TARGET_R3_RATIO = 1.5
TARGET_LOCAL_GET_US = 3.0
TARGET_MEMORY_RATIO = 2.5


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """One run's aggregate (plus its per-process details)."""
    plan: RunPlan = raw["plan"]
    procs = raw["processes"]
    hist = Histogram()
    hist_get = Histogram()
    hist_set = Histogram()
    errors: dict[str, int] = {}
    samples: dict[str, str] = {}
    counters: dict[str, int] = {}
    for proc in procs:
        hist.merge(Histogram.from_json(proc["hist"]))
        hist_get.merge(Histogram.from_json(proc["hist_get"]))
        hist_set.merge(Histogram.from_json(proc["hist_set"]))
        for name, count in proc["errors"].items():
            errors[name] = errors.get(name, 0) + count
        for name, text in proc["error_samples"].items():
            samples.setdefault(name, text)
        for name, value in proc.get("counters", {}).items():
            counters[name] = counters.get(name, 0) + value
    ops = sum(int(p["ops"]) for p in procs)
    duration = plan.duration
    window = raw["window"]
    client_cpu = sum(float(p["cpu_s"]) for p in procs)
    server_cpu = float(window.get("server_cpu_s", 0.0))
    our_cpu = client_cpu + server_cpu
    per_op = 1e6 / ops if ops else 0.0
    out: dict[str, Any] = {
        "system": plan.system,
        "label": label(plan),
        "processes": plan.processes,
        "concurrency": plan.workload["concurrency"],
        "rate": float(plan.workload.get("rate", 0.0)) * plan.processes,
        "replication": plan.replication if plan.system == "peer-ring" else None,
        "quorum": plan.quorum if plan.system == "peer-ring" else None,
        "duration_s": duration,
        "warmup_s": plan.warmup,
        "ops": ops,
        "ops_per_s": ops / duration if duration else 0.0,
        "gets": sum(int(p["gets"]) for p in procs),
        "sets": sum(int(p["sets"]) for p in procs),
        **hist.summary_ms(),
        "get": hist_get.summary_ms(),
        "set": hist_set.summary_ms(),
        "errors": errors,
        "error_total": sum(errors.values()),
        "error_samples": samples,
        "warmup_errors": sum(int(p["warmup_errors"]) for p in procs),
        "cpu_s": our_cpu,
        "cpu_us_per_op": our_cpu * per_op,
        "client_cpu_us_per_op": client_cpu * per_op,
        "server_cpu_us_per_op": server_cpu * per_op if plan.system == "redis" else None,
        "peak_rss_mb": [round(int(p["peak_rss_bytes"]) / 2**20, 1) for p in procs],
        "server_peak_rss_mb": (
            round(window["server_peak_rss_bytes"] / 2**20, 1)
            if "server_peak_rss_bytes" in window
            else None
        ),
        "event_loop": sorted({p["loop"] for p in procs}),
        "loop_lag_max_ms": max(float(p.get("loop_lag_ms", {}).get("max", 0.0)) for p in procs),
        "loop_lag_p99_ms": max(float(p.get("loop_lag_ms", {}).get("p99", 0.0)) for p in procs),
        # Operations still pending past their deadline (completed late, or cancelled at the
        # end): must be 0.
        "overdue": sum(int(p.get("overdue", 0)) + int(p.get("pending_at_end", 0)) for p in procs),
        "overdue_max_ms": max(float(p.get("overdue_max_ms", 0.0)) for p in procs),
        "pending_at_end": sum(int(p.get("pending_at_end", 0)) for p in procs),
        "send_lag_p99_ms": max(float(p.get("send_lag_ms", {}).get("p99", 0.0)) for p in procs),
        "shed": sum(int(p.get("shed", 0)) for p in procs),
        # Garbage collections in the processes' main threads (each one stops the loop).
        "gc_collections": sum(
            int(g["per_1000_ops"] * int(p["ops"]) / 1000 + 0.5)
            for p in procs
            for g in p.get("gc", [])
        ),
        "gc_cpu_us_per_op": (
            sum(g["cpu_us_per_op"] * int(p["ops"]) for p in procs for g in p.get("gc", [])) / ops
            if ops
            else 0.0
        ),
        "gc_max_ms": max((g["max_ms"] for p in procs for g in p.get("gc", [])), default=0.0),
        "prefill_s": raw["prefill_s"],
        "machine": {
            "busy_cpu_s": window["machine_busy_cpu_s"],
            "cores": window["machine_total_cpu_s"] / duration if duration else 0.0,
            "other_cpu_s": max(0.0, window["machine_busy_cpu_s"] - our_cpu),
            "loadavg_1m": window["loadavg_1m"],
            "tcp_during_window": window.get("tcp", {}),
        },
        "per_process": [
            {
                "index": p["index"],
                "ops_per_s": int(p["ops"]) / duration if duration else 0.0,
                "errors": p["errors"],
                "cpu_s": p["cpu_s"],
                "thread_cpu_s": p.get("thread_cpu_s", {}),
                "loop_lag_ms": p.get("loop_lag_ms", {}),
                "peak_rss_mb": round(int(p["peak_rss_bytes"]) / 2**20, 1),
                "gc": p.get("gc", []),
                **Histogram.from_json(p["hist"]).summary_ms(),
            }
            for p in procs
        ],
        "logs": raw["logs"],
        # The merged latency histogram: {bucket: count}, bucket b spans 1.01**b..1.01**(b+1) ns.
        "histogram": hist.to_json(),
    }
    if counters:
        out["transport"] = counters
        frames = counters.get("frames_sent", 0)
        if frames:
            sent = counters.get("requests_sent", 0) + counters.get("responses_sent", 0)
            out["transport"]["messages_per_frame"] = round(sent / frames, 2)
    if plan.system == "peer-ring":
        out["addresses"] = raw["addresses"]
    if raw.get("profile"):
        out["profile"] = raw["profile"]
    return out


def mode(plan: RunPlan) -> str:
    """``c64`` (closed loop, 64 in flight per process) or ``3000/s`` (open loop, all
    processes together), with ``n5`` in front when the run has other than 3 processes."""
    rate = float(plan.workload.get("rate", 0.0)) * plan.processes
    text = f"{rate:.0f}/s" if rate > 0 else f"c{plan.workload['concurrency']}"
    return text if plan.processes == 3 else f"n{plan.processes} {text}"


def label(plan: RunPlan) -> str:
    """Short name of a configuration."""
    if plan.system == "redis":
        return f"redis {mode(plan)}"
    transport = plan.extra.get("transport", "grpc")
    kind = "" if transport == "grpc" else f" {transport}"
    return f"peer-ring{kind} R{plan.replication}/Q{plan.quorum} {mode(plan)}"


def _same_load(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return bool(
        a["concurrency"] == b["concurrency"]
        and a.get("rate", 0.0) == b.get("rate", 0.0)
        and a["processes"] == b["processes"]
        and a["round"] == b["round"]
    )


def compare(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """peer-ring / Redis ratios, pairing each peer-ring run with the Redis run of the same
    load (concurrency or rate, processes) and round (same invocation, minutes apart)."""
    out = []
    for run in runs:
        if run["system"] != "peer-ring":
            continue
        redis = [r for r in runs if r["system"] == "redis" and _same_load(r, run)]
        if not redis or not redis[0]["ops_per_s"]:
            continue
        base = redis[0]
        out.append(
            {
                "label": run["label"],
                "round": run["round"],
                "concurrency": run["concurrency"],
                "rate": run.get("rate", 0.0),
                "processes": run["processes"],
                "replication": run["replication"],
                "quorum": run["quorum"],
                "p99_ratio": run["p99_ms"] / base["p99_ms"] if base["p99_ms"] else None,
                "peer_ring_ops_per_s": run["ops_per_s"],
                "redis_ops_per_s": base["ops_per_s"],
                "ratio": run["ops_per_s"] / base["ops_per_s"],
                "cpu_ratio": (
                    run["cpu_us_per_op"] / base["cpu_us_per_op"] if base["cpu_us_per_op"] else None
                ),
            }
        )
    return out


def _median_by_config(comparisons: list[dict[str, Any]], r: int, q: int, c: int) -> Any:
    ratios = [
        x["ratio"]
        for x in comparisons
        if x["replication"] == r
        and x["quorum"] == q
        and x["concurrency"] == c
        and not x.get("rate")
        and x.get("processes", 3) == 3
    ]
    return statistics.median(ratios) if ratios else None


def targets(
    runs: list[dict[str, Any]],
    comparisons: list[dict[str, Any]],
    micro: dict[str, Any] | None,
    memory: dict[str, Any] | None,
    nodes: int,
) -> list[dict[str, Any]]:
    """The issue's targets that this invocation measured, each with met/missed."""
    out: list[dict[str, Any]] = []

    def add(name: str, target: str, measured: Any, met: bool) -> None:
        out.append({"name": name, "target": target, "measured": measured, "met": bool(met)})

    if nodes == 3:
        for r, q, ratio_goal in ((1, 1, TARGET_R1_RATIO), (3, 2, TARGET_R3_RATIO)):
            ratio = _median_by_config(comparisons, r, q, 64)
            matching = [
                x
                for x in runs
                if x["system"] == "peer-ring"
                and x["replication"] == r
                and x["quorum"] == q
                and x["concurrency"] == 64
                and not x.get("rate")
                and x["processes"] == 3
            ]
            if ratio is not None:
                add(
                    f"R{r}/Q{q} c64 ops/s vs Redis",
                    f">= {ratio_goal}x",
                    round(ratio, 2),
                    ratio >= ratio_goal,
                )
            if matching:
                errs = sum(x["error_total"] for x in matching)
                add(f"R{r}/Q{q} c64 errors", "0", errs, errs == 0)
                if r == 1:
                    p99 = max(x["p99_ms"] for x in matching)
                    add(
                        "R1/Q1 c64 p99",
                        f"< {TARGET_R1_P99_MS} ms",
                        round(p99, 2),
                        p99 < TARGET_R1_P99_MS,
                    )
    if micro:
        for entry in micro["local_get"]:
            median = entry["await_per_call_us"]["median"]
            add(
                f"local get median (R{entry['replication']}, await, per call)",
                f"<= {TARGET_LOCAL_GET_US} us",
                round(median, 2),
                median <= TARGET_LOCAL_GET_US,
            )
    if memory:
        add(
            f"{memory['keys']:,} keys x {memory['value_size']} B: RSS / raw",
            f"<= {TARGET_MEMORY_RATIO}x",
            round(memory["ratio"], 2),
            memory["ratio"] <= TARGET_MEMORY_RATIO,
        )
    return out


# -- terminal output ---------------------------------------------------------------------


def run_table(runs: list[dict[str, Any]], comparisons: list[dict[str, Any]]) -> str:
    """The main results table."""
    by_label = {(c["label"], c["round"]): c for c in comparisons}
    header = (
        f"{'run':<30} {'ops/s':>9} {'vs redis':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'p99 vs':>6} {'p99.9 ms':>8} {'errors':>6} {'late':>4} {'CPU us/op':>9} "
        f"{'CPU vs':>6} {'peak RSS MB':>12} {'other CPU':>9} {'loop lag p99/max ms':>19}"
    )
    lines = [header, "-" * len(header)]
    for run in runs:
        c = by_label.get((run["label"], run["round"]))
        ratio = c["ratio"] if c else None
        p99_ratio = c["p99_ratio"] if c else None
        cpu_ratio = c["cpu_ratio"] if c else None
        rss = max(run["peak_rss_mb"]) if run["peak_rss_mb"] else 0.0
        rss_text = f"{rss:.0f}/proc"
        if run["server_peak_rss_mb"] is not None:
            rss_text = f"{rss:.0f}+{run['server_peak_rss_mb']:.0f}srv"
        other = run["machine"]["other_cpu_s"] / run["duration_s"] if run["duration_s"] else 0.0
        name = run["label"] + (f" #{run['round'] + 1}" if run.get("rounds", 1) > 1 else "")
        lines.append(
            f"{name:<30} {run['ops_per_s']:>9,.0f} {_x(ratio):>8} "
            f"{run['p50_ms']:>7.2f} {run['p99_ms']:>7.2f} {_x(p99_ratio):>6} "
            f"{run['p999_ms']:>8.2f} {run['error_total']:>6} {run.get('overdue', 0):>4} "
            f"{run['cpu_us_per_op']:>9.1f} {_x(cpu_ratio):>6} {rss_text:>12} "
            f"{other:>8.2f}c "
            f"{run['loop_lag_p99_ms']:>9.1f}/{run['loop_lag_max_ms']:<9.1f}"
        )
        if run["error_total"]:
            for name_, count in run["errors"].items():
                sample = run["error_samples"].get(name_, "")
                lines.append(f"    {count} x {name_}: {sample[:120]}")
    return "\n".join(lines)


def _x(ratio: float | None) -> str:
    return f"{ratio:.2f}x" if ratio is not None else "-"


def ratio_summary(comparisons: list[dict[str, Any]]) -> str:
    """Per configuration, over the rounds: the ops/s ratio and the CPU-efficiency ratio
    (Redis CPU per op / peer-ring CPU per op). On a saturated machine throughput follows
    CPU per op, and CPU per op is far less sensitive to the neighbours' load than ops/s."""
    groups: dict[tuple[Any, ...], list[tuple[str, dict[str, Any]]]] = {}
    for c in comparisons:
        # The transport is part of the label ("peer-ring tcp R1/Q1 c64"); gRPC has none.
        kind = "tcp " if c["label"].startswith("peer-ring tcp ") else ""
        rate = c.get("rate", 0.0)
        load = f"{rate:.0f}/s" if rate else f"c{c['concurrency']}"
        if c.get("processes", 3) != 3:
            load = f"n{c['processes']} {load}"
        key = (c.get("processes", 3), rate, c["concurrency"], c["replication"], c["quorum"], kind)
        groups.setdefault(key, []).append((load, c))
    lines = ["peer-ring / Redis, median over rounds (min..max):"]
    for (_, rate, _, r, q, kind), pairs in sorted(groups.items()):
        load = pairs[0][0]
        items = [c for _, c in pairs]
        ops = [c["ratio"] for c in items]
        eff = [1 / c["cpu_ratio"] for c in items if c["cpu_ratio"]]
        p99 = [c["p99_ratio"] for c in items if c.get("p99_ratio") is not None]
        text = f"  {kind}R{r}/Q{q} {load}: "
        if rate:  # open loop: the offered rate is fixed, the latency is what differs
            if p99:
                text += f"p99 {statistics.median(p99):.2f}x ({min(p99):.2f}..{max(p99):.2f})"
            else:
                text += "p99 -"
        else:
            text += f"ops/s {statistics.median(ops):.2f}x ({min(ops):.2f}..{max(ops):.2f})"
        if eff:
            text += (
                f", CPU efficiency {statistics.median(eff):.2f}x ({min(eff):.2f}..{max(eff):.2f})"
            )
        lines.append(text)
    return "\n".join(lines)


def micro_table(micro: dict[str, Any]) -> str:
    """Local-get micro-benchmark lines."""
    lines = [
        "local get of an owned key (quorum=1), microseconds per call:",
        f"  {'replication':<12} {'await/call p50':>14} {'p99':>7} {'p99.9':>7} "
        f"{'await batched':>13} {'timeit best':>11} {'engine best':>11}",
    ]
    for e in micro["local_get"]:
        lines.append(
            f"  R{e['replication']:<11} {e['await_per_call_us']['median']:>14.2f} "
            f"{e['await_per_call_us']['p99']:>7.2f} {e['await_per_call_us']['p999']:>7.2f} "
            f"{e['await_batched_us']['median']:>13.2f} {e['timeit_us']['best']:>11.2f} "
            f"{e['engine_get_us']['best']:>11.2f}"
        )
    return "\n".join(lines)


def memory_table(memory: dict[str, Any]) -> str:
    """Memory test lines."""
    lines = [
        f"memory: {memory['keys']:,} keys (12 B) x {memory['value_size']} B in one node "
        f"(R1): raw {memory['raw_bytes'] / 2**20:.1f} MiB, RSS +"
        f"{memory['rss_delta_bytes'] / 2**20:.1f} MiB = {memory['ratio']:.2f}x raw "
        f"({memory['bytes_per_key']:.0f} B/key)"
    ]
    redis = memory.get("redis")
    if redis:
        lines.append(
            f"        same data in redis-server: used_memory +"
            f"{redis['used_memory_delta_bytes'] / 2**20:.1f} MiB = "
            f"{redis['ratio_used_memory']:.2f}x raw, RSS +"
            f"{redis['rss_delta_bytes'] / 2**20:.1f} MiB = {redis['ratio_rss']:.2f}x"
        )
    return "\n".join(lines)


def targets_table(items: list[dict[str, Any]], title: str = "targets (issue 6):") -> str:
    """Target lines (never a gate: speed is not asserted, docs/benchmarks.md)."""
    lines = [title]
    for t in items:
        mark = "met   " if t["met"] else "MISSED"
        lines.append(f"  {mark} {t['name']:<46} {t['target']:>12}   measured {t['measured']}")
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    info["cpus"] = os.cpu_count()
    try:
        meminfo = Path("/proc/meminfo").read_text().splitlines()[0].split()
        info["memory_gib"] = round(int(meminfo[1]) / 2**20, 1)
    except (OSError, IndexError, ValueError):
        pass
    for module in ("uvloop", "grpc", "google.protobuf", "redis"):
        try:
            mod = __import__(module, fromlist=["__version__"])
            info[module] = getattr(mod, "__version__", "?")
        except ImportError:
            info[module] = None
    return info


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write the results document (creating the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")


def markdown(document: dict[str, Any]) -> str:
    """The results as Markdown tables (for docs/benchmarks.md)."""
    runs = document["runs"]
    comparisons = document["comparisons"]
    ratio_of = {(c["label"], c["round"]): c for c in comparisons}
    out = [
        "| run | round | ops/s | vs Redis | p50 ms | p99 ms | p99 vs Redis | p99.9 ms "
        "| errors | late | CPU µs/op | CPU eff. vs Redis | peak RSS MB/proc "
        "| other load (cores) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        c = ratio_of.get((run["label"], run["round"]))
        ratio = f"{c['ratio']:.2f}x" if c else "-"
        eff = f"{1 / c['cpu_ratio']:.2f}x" if c and c["cpu_ratio"] else "-"
        rss = f"{max(run['peak_rss_mb']):.0f}"
        if run.get("server_peak_rss_mb") is not None:
            rss += f" (+{run['server_peak_rss_mb']:.0f} server)"
        other = run["machine"]["other_cpu_s"] / run["duration_s"]
        out.append(
            f"| {run['label']} | {run['round'] + 1} | {run['ops_per_s']:,.0f} | {ratio} "
            f"| {run['p50_ms']:.2f} | {run['p99_ms']:.2f} "
            f"| {_x(c['p99_ratio'] if c else None)} | {run['p999_ms']:.1f} "
            f"| {run['error_total']} | {run.get('overdue', 0)} "
            f"| {run['cpu_us_per_op']:.0f} | {eff} | {rss} "
            f"| {other:.2f} |"
        )
    micro = document.get("micro")
    if micro:
        out += [
            "",
            "| local get, owned key, quorum=1 | await per call p50 | p99 | await, batches "
            "of 100 (median) | timeit best | engine.get best |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for e in micro["local_get"]:
            out.append(
                f"| replication {e['replication']} | {e['await_per_call_us']['median']:.2f} µs "
                f"| {e['await_per_call_us']['p99']:.2f} µs "
                f"| {e['await_batched_us']['median']:.2f} µs "
                f"| {e['timeit_us']['best']:.2f} µs | {e['engine_get_us']['best']:.2f} µs |"
            )
    memory = document.get("memory")
    if memory:
        out += ["", memory_table(memory)]
    goals = document.get("targets")
    if goals:
        out += ["", "| target | goal | measured | |", "|---|---|---|---|"]
        for t in goals:
            out.append(
                f"| {t['name']} | {t['target']} | {t['measured']} "
                f"| {'met' if t['met'] else '**missed**'} |"
            )
    return "\n".join(out) + "\n"
