"""Per-request tracing of open-loop runs (``tools/bench --trace``): what the slow ones met.

An open-loop p99 is set by the slowest 1% of operations. To say *why* they were slow, every
process of a run (peer-ring nodes and Redis clients alike) records, on the shared monotonic
clock (``time.perf_counter_ns`` is ``CLOCK_MONOTONIC`` on Linux, the same in every
process):

* every operation: its intended start, its latency and its key;
* every garbage collection: start, end, generation (``gc.callbacks``);
* every **loop stall**: a 1 ms sleep that woke more than :data:`STALL_NS` late, with the
  thread CPU time the process spent meanwhile. CPU close to the stall's length means the
  loop was busy with this process's own work; little CPU means the process was not
  scheduled (the machine's other processes, or the cores shared by the run's own
  processes);
* every step of a **background-sync task** of the node (coroutines of
  ``peer_ring.core._sync``: anti-entropy, pulls, handoff, hints, probes, ``digests``
  answers) that took more than :data:`STEP_NS` of CPU, with its coroutine's name (an
  asyncio task factory wraps those coroutines; no change to the node).

:func:`attribute` then takes the operations slower than a threshold (the Redis run's p99 at
the same rate) and gives each the first cause it overlapped in any process it involved (its
own and, for peer-ring, the key's replicas): a GC, a sync step, a busy loop, a
descheduled process, or none. It also recomputes the p99 without the operations of each
cause, which bounds how much of the excess over Redis that cause explains.

Tracing costs a 1 ms timer per process and a tuple per operation: its absolute figures are
not the untraced benchmark's. It is for attribution, alternated with untraced runs.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from array import array
from collections.abc import Coroutine, Generator
from pathlib import Path
from typing import Any

#: A loop-monitor sleep waking this much later than asked is a stall (the loop's timers
#: have a millisecond resolution: a 1 ms sleep routinely wakes up to 1 ms late).
STALL_NS = 1_000_000
#: Period of the loop monitor.
MONITOR_NS = 1_000_000
#: A sync-task step with at least this much CPU is recorded.
STEP_NS = 200_000
#: Overlaps shorter than this are ignored when attributing.
MIN_EVENT_NS = 500_000
#: An operation counts as touched by a cause from this much overlap.
TOUCH_NS = 100_000


class _Timed(Coroutine[Any, Any, Any]):
    """Wraps a coroutine and records each step's wall and CPU time (``send``/``throw``)."""

    def __init__(self, inner: Coroutine[Any, Any, Any], name: str, out: list[Any]) -> None:
        self._inner = inner
        # The instance's id tells one round's steps from another's (``name#id``).
        self._name = f"{name}#{id(self)}"
        self._out = out

    def _step(self, fn: Any, *args: Any) -> Any:
        wall0 = time.perf_counter_ns()
        cpu0 = time.thread_time_ns()
        try:
            return fn(*args)
        finally:
            cpu = time.thread_time_ns() - cpu0
            if cpu >= STEP_NS:
                self._out.append((wall0, time.perf_counter_ns() - wall0, cpu, self._name))

    def send(self, value: Any) -> Any:
        return self._step(self._inner.send, value)

    def throw(self, *args: Any) -> Any:
        return self._step(self._inner.throw, *args)

    def close(self) -> None:
        self._inner.close()

    def __await__(self) -> Generator[Any, None, Any]:
        return self._inner.__await__()


class OpLog:
    """Operations as flat arrays: no GC-tracked object per operation (a list of tuples
    made the tracer itself trigger full collections in the Redis clients)."""

    def __init__(self) -> None:
        self.intended = array("q")
        self.latency = array("q")
        self.keys: list[str] = []

    def append(self, op: tuple[int, int, str]) -> None:
        """Record ``(intended start ns, latency ns, key)``."""
        self.intended.append(op[0])
        self.latency.append(op[1])
        self.keys.append(op[2])

    def rows(self) -> list[tuple[int, int, str]]:
        """The recorded operations."""
        return list(zip(self.intended, self.latency, self.keys, strict=True))


class Tracer:
    """One process's trace (see the module docstring)."""

    def __init__(self) -> None:
        self.ops = OpLog()
        self.gcs: list[tuple[int, int, int, int]] = []  # start, end, generation, CPU ns
        self.stalls: list[tuple[int, int, int]] = []
        self.steps: list[tuple[int, int, int, str]] = []
        self._gc_began = 0
        self._gc_cpu = 0
        self._window = (0, 0)

    # -- recording --------------------------------------------------------------------

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter_ns()
        if phase == "start":
            self._gc_began = now
            self._gc_cpu = time.thread_time_ns()
        else:
            cpu = time.thread_time_ns() - self._gc_cpu
            self.gcs.append((self._gc_began, now, info["generation"], cpu))

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start recording GCs and wrapping the node's sync coroutines."""
        gc.callbacks.append(self._on_gc)
        steps = self.steps

        def factory(
            loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any
        ) -> asyncio.Future[Any]:
            code = getattr(coro, "cr_code", None)
            if code is not None and "/_sync/" in code.co_filename:
                coro = _Timed(coro, code.co_qualname, steps)
            return asyncio.Task(coro, loop=loop, **kwargs)

        loop.set_task_factory(factory)

    def uninstall(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stop recording GCs; tasks made from now on are not wrapped."""
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        loop.set_task_factory(None)

    async def monitor(self, start_ns: int, end_ns: int) -> None:
        """The 1 ms loop monitor, from ``start_ns`` to ``end_ns`` (perf_counter_ns)."""
        self._window = (start_ns, end_ns)
        clock = time.perf_counter_ns
        cpu = time.thread_time_ns
        stalls = self.stalls
        period = MONITOR_NS / 1e9
        while (now := clock()) < end_ns:
            cpu0 = cpu()
            await asyncio.sleep(period)
            lag = clock() - now - MONITOR_NS
            if lag > STALL_NS and now >= start_ns:
                stalls.append((now, lag + MONITOR_NS, cpu() - cpu0))

    def dump(self, path: Path, owners: dict[str, list[int]] | None = None) -> None:
        """Write the trace as JSON (``owners``: process indexes of each slow op's key)."""
        path.write_text(
            json.dumps(
                {
                    "window": list(self._window),
                    "ops": self.ops.rows(),
                    "gcs": self.gcs,
                    "stalls": self.stalls,
                    "steps": self.steps,
                    "owners": owners or {},
                }
            )
        )


# -- attribution (parent side) ---------------------------------------------------------

CAUSES = ("gc", "sync", "loop busy", "descheduled", "none")


def _p99(values: list[int]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] / 1e6


def _events(trace: dict[str, Any]) -> dict[str, list[tuple[int, int]]]:
    """Intervals (start, end) per cause of one process."""
    out: dict[str, list[tuple[int, int]]] = {c: [] for c in CAUSES[:-1]}
    for start, end, _gen, _cpu in trace["gcs"]:
        if end - start >= TOUCH_NS:
            out["gc"].append((start, end))
    for start, wall, _cpu, _name in trace["steps"]:
        out["sync"].append((start, start + wall))
    for start, wall, cpu in trace["stalls"]:
        # The stall is the part past the monitor's own 1 ms sleep.
        kind = "loop busy" if cpu * 2 >= wall else "descheduled"
        out[kind].append((start, start + wall))
    for spans in out.values():
        spans.sort()
    return out


def _rounds(trace: dict[str, Any]) -> list[tuple[int, int]]:
    """Spans of the sync tasks with at least two recorded steps (first start, last end)."""
    spans: dict[str, tuple[int, int]] = {}
    counts: dict[str, int] = {}
    for start, wall, _cpu, name in trace["steps"]:
        first, last = spans.get(name, (start, start + wall))
        spans[name] = (min(first, start), max(last, start + wall))
        counts[name] = counts.get(name, 0) + 1
    return sorted(span for name, span in spans.items() if counts[name] > 1)


def _overlap(spans: list[tuple[int, int]], start: int, end: int) -> int:
    """Nanoseconds of ``[start, end)`` covered by ``spans`` (linear: a run has at most a few
    thousand events per process)."""
    return sum(min(e, end) - max(s, start) for s, e in spans if s < end and e > start)


def attribute(traces: list[dict[str, Any]], threshold_ms: float) -> dict[str, Any]:
    """Classify the operations slower than ``threshold_ms`` (see the module docstring).

    Each slow operation gets the cause whose events covered most of its time in the
    processes it involved (its own, and the replicas of its key), if that covers at least
    :data:`MIN_EVENT_NS`; else ``none``. Operations whose key has only this process as
    replica are *local* (replication 1: a third of them), the others *remote*.
    """
    events = [_events(t) for t in traces]
    threshold = int(threshold_ms * 1e6)
    latencies: list[int] = []
    by_place: dict[str, list[int]] = {"local": [], "remote": []}
    tagged: list[tuple[int, str]] = []
    sync_names: dict[str, int] = {}
    touched = dict.fromkeys(CAUSES[:-1], 0)
    rounds = [_rounds(t) for t in traces]
    in_rounds: list[int] = []
    for index, trace in enumerate(traces):
        owners: dict[str, list[int]] = trace.get("owners", {})
        w0, w1 = trace["window"]
        for intended, latency, key in trace["ops"]:
            if not w0 <= intended < w1:
                continue
            latencies.append(latency)
            replicas = owners.get(key)
            if replicas is not None:
                place = "local" if replicas == [index] else "remote"
                by_place[place].append(latency)
            involved = {index, *(replicas or [])}
            end = intended + latency
            covered = {
                name: max(_overlap(events[i][name], intended, end) for i in involved)
                for name in CAUSES[:-1]
            }
            for name, ns in covered.items():
                if ns >= TOUCH_NS:
                    touched[name] += 1
            if any(_overlap(rounds[i], intended, end) for i in involved):
                in_rounds.append(latency)
            if latency <= threshold:
                tagged.append((latency, ""))
                continue
            cause = max(covered, key=lambda name: covered[name])
            if covered[cause] < MIN_EVENT_NS:
                cause = "none"
            if cause == "sync":
                for i in involved:
                    for start, wall, cpu, step in traces[i]["steps"]:
                        if cpu >= MIN_EVENT_NS and start < end and start + wall > intended:
                            name = step.split("#")[0]
                            sync_names[name] = sync_names.get(name, 0) + 1
            tagged.append((latency, cause))
    slow = [c for _, c in tagged if c]
    p99 = _p99(latencies)
    without = {
        cause: _p99([lat for lat, c in tagged if c != cause]) for cause in CAUSES if cause != "none"
    }
    excess = p99 - threshold_ms
    return {
        "ops": len(latencies),
        "threshold_ms": threshold_ms,
        "p99_ms": p99,
        "p50_ms": sorted(latencies)[len(latencies) // 2] / 1e6 if latencies else 0.0,
        "slow": len(slow),
        "causes": {c: slow.count(c) for c in CAUSES},
        "p99_without_ms": without,
        "share_of_excess": {
            c: (p99 - v) / excess if excess > 0 else 0.0 for c, v in without.items()
        },
        # Replication 1: a key this process holds is served without leaving it.
        "p99_local_remote_ms": {k: _p99(v) for k, v in by_place.items()},
        "p50_local_remote_ms": {
            k: sorted(v)[len(v) // 2] / 1e6 if v else 0.0 for k, v in by_place.items()
        },
        "sync_steps": sync_names,
        # All operations (slow or not) that a cause's events covered for >= 0.1 ms.
        "touched": touched,
        # Operations that overlapped a sync task's span (its first to its last recorded
        # step) in a process they involved: how a round's slices and gaps treat them.
        "in_sync_rounds": {
            "ops": len(in_rounds),
            "p50_ms": sorted(in_rounds)[len(in_rounds) // 2] / 1e6 if in_rounds else 0.0,
            "p99_ms": _p99(in_rounds),
            "mean_ms": sum(in_rounds) / len(in_rounds) / 1e6 if in_rounds else 0.0,
        },
        "per_process": [
            {
                "gcs": len(t["gcs"]),
                "gc_max_ms": max((e - s for s, e, _, _c in t["gcs"]), default=0) / 1e6,
                "gc_cpu_max_ms": max((c for *_, c in t["gcs"]), default=0) / 1e6,
                "gen2": sum(1 for *_, g, _c in t["gcs"] if g == 2),
                "sync_cpu_ms": sum(c for *_, c, _n in t["steps"]) / 1e6,
                "stalls_busy": sum(1 for _, w, c in t["stalls"] if c * 2 >= w),
                "stalls_descheduled": sum(1 for _, w, c in t["stalls"] if c * 2 < w),
                "sync_steps_over_0.5ms": sum(1 for *_, c, _n in t["steps"] if c >= MIN_EVENT_NS),
                "sync_step_max_ms": max((c for *_, c, _n in t["steps"]), default=0) / 1e6,
            }
            for t in traces
        ],
    }


def load(paths: list[str]) -> list[dict[str, Any]]:
    """The traces written by the processes of one run."""
    return [json.loads(Path(p).read_text()) for p in paths]


def describe(label: str, result: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    causes = ", ".join(f"{c} {n}" for c, n in result["causes"].items())
    shares = ", ".join(
        f"{c} {result['p99_without_ms'][c]:.2f} ms ({share:+.0%})"
        for c, share in result["share_of_excess"].items()
    )
    lines = [
        f"  {label}: p99 {result['p99_ms']:.2f} ms, {result['slow']} of {result['ops']} ops "
        f"over {result['threshold_ms']:.2f} ms: {causes}",
        f"    p50/p99 of ops with this process as only replica (local) "
        f"{result['p50_local_remote_ms']['local']:.2f}/{result['p99_local_remote_ms']['local']:.2f}"
        f" ms, others {result['p50_local_remote_ms']['remote']:.2f}"
        f"/{result['p99_local_remote_ms']['remote']:.2f} ms",
        f"    p99 without each cause (share of the excess): {shares}",
    ]
    touched = ", ".join(f"{c} {n}" for c, n in result["touched"].items())
    lines.append(f"    all ops touched (>= 0.1 ms) by: {touched}")
    r = result["in_sync_rounds"]
    lines.append(
        f"    ops during sync rounds: {r['ops']}, p50 {r['p50_ms']:.2f} / p99 {r['p99_ms']:.2f}"
        f" / mean {r['mean_ms']:.2f} ms"
    )
    if result["sync_steps"]:
        top = sorted(result["sync_steps"].items(), key=lambda kv: -kv[1])[:5]
        lines.append("    sync steps met: " + ", ".join(f"{n} x{k}" for n, k in top))
    for i, p in enumerate(result["per_process"]):
        lines.append(
            f"    process {i}: {p['gcs']} GCs ({p['gen2']} gen 2; max {p['gc_max_ms']:.1f} ms, "
            f"CPU {p['gc_cpu_max_ms']:.1f} ms), sync steps CPU {p['sync_cpu_ms']:.0f} ms, stalls "
            f"{p['stalls_busy']} busy / {p['stalls_descheduled']} descheduled, sync steps "
            f">0.5 ms {p['sync_steps_over_0.5ms']} (max {p['sync_step_max_ms']:.1f} ms)"
        )
    return "\n".join(lines)
