"""What one invocation runs (its cases), and the targets of issue 23 (``--suite``).

A *case* is one load shape -- processes, closed loop at a concurrency or open loop at a
rate -- measured on Redis and on every peer-ring configuration of the case, back to back,
so each peer-ring line has a Redis baseline of the same load in the same invocation.

``--suite`` is the issue's matrix in one invocation (about 25 runs):

- 3 nodes, closed loop, 16 / 64 / 256 in flight: R1/Q1 and R3/Q2 over TCP (64 in flight
  over gRPC too, the issue's second table);
- 3 nodes, open loop at 1,000 / 3,000 / 6,000 ops/s: R1/Q1 and R3/Q2 over TCP;
- 1 node (R1/Q1) and 5 nodes (R1/Q1, R3/Q2), closed loop, 64 in flight, over TCP.
"""

from __future__ import annotations

import argparse
import functools
import operator
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Open loop: the Redis clients' connection pool per process (opened before the run; a
#: burst beyond it waits for a connection, which counts in its latency). It is the
#: workload's nominal concurrency; the open loop itself does not use it.
OPEN_LOOP_POOL = 64

#: (replication, quorum, transport) of one peer-ring run.
Config = tuple[int, int, str]


@dataclass(frozen=True)
class Case:
    """One load shape and the peer-ring configurations measured under it."""

    processes: int
    concurrency: int
    rate: float  # total ops/s over the processes; 0: closed loop
    configs: list[Config] = field(default_factory=list)


def _both(transport: str, nodes: int) -> list[Config]:
    return [(1, 1, transport), (min(3, nodes), min(2, nodes), transport)]


def suite_cases() -> list[Case]:
    """The issue-23 matrix (see the module's docstring)."""
    cases = []
    for concurrency in (16, 64, 256):
        configs = _both("tcp", 3)
        if concurrency == 64:
            configs += _both("grpc", 3)
        cases.append(Case(3, concurrency, 0.0, configs))
    for rate in (1000.0, 3000.0, 6000.0):
        cases.append(Case(3, OPEN_LOOP_POOL, rate, _both("tcp", 3)))
    cases.append(Case(1, 64, 0.0, [(1, 1, "tcp")]))
    cases.append(Case(5, 64, 0.0, _both("tcp", 5)))
    return cases


def cases(opts: argparse.Namespace) -> list[Case]:
    """The cases of this invocation, from the options."""
    if opts.suite:
        return suite_cases()
    if opts.matrix:
        pairs = [(1, 1), (min(3, opts.nodes), min(2, opts.nodes))]
    else:
        pairs = [(opts.replication, opts.quorum)]
    configs = [] if opts.redis_only else [(r, q, t) for r, q in pairs for t in opts.transport]
    if opts.rate:
        return [Case(opts.nodes, OPEN_LOOP_POOL, float(rate), configs) for rate in opts.rate]
    concurrencies = [16, 64] if opts.matrix else list(opts.concurrency)
    return [Case(opts.nodes, c, 0.0, configs) for c in concurrencies]


# -- the targets -------------------------------------------------------------------


def _pick(
    items: list[dict[str, Any]], r: int, q: int, transport: str, *, rate: float = 0.0, c: int = 64
) -> list[dict[str, Any]]:
    kind = "tcp " if transport == "tcp" else ""
    return [
        x
        for x in items
        if x["replication"] == r
        and x["quorum"] == q
        and x["label"].startswith(f"peer-ring {kind}R")
        and x.get("processes", 3) == 3
        and (x.get("rate") or 0.0) == rate
        and (rate or x["concurrency"] == c)
    ]


def targets(runs: list[dict[str, Any]], comparisons: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 23's targets that this invocation measured (medians over the rounds, and the
    worst round in ``measured``), each met or missed."""
    out: list[dict[str, Any]] = []

    def add(
        name: str,
        goal: str,
        values: list[float],
        ok: Callable[[float], bool],
    ) -> None:
        if not values:
            return
        median = statistics.median(values)
        shown = f"{median:.2f}" + (
            f" ({min(values):.2f}..{max(values):.2f})" if len(values) > 1 else ""
        )
        out.append({"name": name, "target": goal, "measured": shown, "met": ok(median)})

    for transport, goals in (("tcp", (3.0, 1.5)), ("grpc", (2.0, 1.0))):
        for (r, q), goal in zip(((1, 1), (3, 2)), goals, strict=True):
            values = [c["ratio"] for c in _pick(comparisons, r, q, transport)]
            add(
                f"{transport} R{r}/Q{q} c64 closed loop ops/s vs Redis",
                f">= {goal}x",
                values,
                functools.partial(operator.le, goal),
            )
    for rate in (1000.0, 3000.0):
        for (r, q), goal in (((1, 1), 1.0), ((3, 2), 1.5)):
            values = [c["p99_ratio"] for c in _pick(comparisons, r, q, "tcp", rate=rate)]
            add(
                f"tcp R{r}/Q{q} {rate:.0f}/s p99 vs Redis",
                f"<= {goal}x",
                [v for v in values if v is not None],
                functools.partial(operator.ge, goal),
            )
    for rate in (1000.0, 3000.0, 6000.0):
        values = [x["p99_ms"] for x in _pick(runs, 3, 2, "tcp", rate=rate)]
        add(f"tcp R3/Q2 {rate:.0f}/s p99", "< 5 ms", values, lambda v: v < 5.0)
    for (r, q), goal in (((1, 1), 1.0), ((3, 2), 2.0)):
        values = [c["cpu_ratio"] for c in _pick(comparisons, r, q, "tcp", rate=1000.0)]
        add(
            f"tcp R{r}/Q{q} 1000/s CPU per op vs Redis",
            f"<= {goal}x",
            [v for v in values if v is not None],
            functools.partial(operator.ge, goal),
        )
    peer = [x for x in runs if x["system"] == "peer-ring"]
    if peer:
        errors = sum(x["error_total"] for x in peer)
        late = sum(x.get("overdue", 0) for x in peer)
        out.append(
            {
                "name": "errors, all peer-ring runs",
                "target": "0",
                "measured": errors,
                "met": errors == 0,
            }
        )
        out.append(
            {
                "name": "pending past their deadline, all runs",
                "target": "0",
                "measured": late + sum(x.get("overdue", 0) for x in runs if x["system"] == "redis"),
                "met": late == 0,
            }
        )
    return out
