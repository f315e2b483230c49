"""The closed-loop load generator, identical for peer-ring and for Redis.

``concurrency`` asyncio tasks each loop "pick the next operation, await it, record its
latency", so exactly ``concurrency`` operations are in flight per process (a closed loop:
the offered load adapts to the system's speed, as an application's request handlers would).

The operation sequence is precomputed (a seeded list of ``(key, is_read)``), so the hot loop
spends no time in ``random``; each task starts at a different offset of it. Both systems get
the same keys, values and sequence for the same seed.

Timing: all processes of a run share one wall-clock schedule (``warm-up start``,
``measurement start``, ``measurement end``), converted to this process's
``time.perf_counter_ns``. Operations completing inside the measurement window are counted;
latencies are recorded raw and turned into a histogram after the window (no work on the
hot path beyond two clock reads and a list append, ~100 ns).

Every loop is bounded both in time (the window's end) and in count (``max_ops``).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from benchlib._hist import Histogram

GetOp = Callable[[str], Awaitable[Any]]
SetOp = Callable[[str, bytes], Awaitable[Any]]

#: Length of the precomputed operation sequence (a power of two: index with a mask).
_SEQUENCE = 1 << 16
#: Period of the event-loop lag monitor.
_LAG_PERIOD_NS = 10_000_000


@dataclass(frozen=True)
class Workload:
    """What every process does.

    Attributes:
        keys: size of the key space (keys ``key:00000000`` ...).
        value_size: bytes per value.
        read_ratio: fraction of operations that are gets (the rest are sets).
        concurrency: operations in flight per process (= looping tasks).
        max_ops: hard bound on the operations one process performs (safety net).
        seed: seeds the operation sequence (each process adds its index).
    """

    keys: int = 10_000
    value_size: int = 100
    read_ratio: float = 0.5
    concurrency: int = 64
    max_ops: int = 20_000_000
    seed: int = 1


@dataclass(frozen=True)
class Schedule:
    """A run's wall-clock schedule (``time.time()`` seconds), shared by all processes."""

    start_at: float
    warmup: float
    duration: float

    def perf_ns(self) -> tuple[int, int, int]:
        """(load start, measurement start, measurement end) on ``perf_counter_ns``."""
        offset = time.perf_counter() - time.time()
        start = self.start_at + offset
        return (
            int(start * 1e9),
            int((start + self.warmup) * 1e9),
            int((start + self.warmup + self.duration) * 1e9),
        )


@dataclass
class LoadResult:
    """What one process measured inside the window."""

    gets: list[int] = field(default_factory=list)  # latencies, ns
    sets: list[int] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    error_samples: dict[str, str] = field(default_factory=dict)
    warmup_ops: int = 0
    warmup_errors: int = 0
    window_s: float = 0.0
    loop_lag_ns: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Counts and histograms (no raw latencies)."""
        both = Histogram.from_ns(self.gets)
        both.merge(Histogram.from_ns(self.sets))
        return {
            "ops": len(self.gets) + len(self.sets),
            "gets": len(self.gets),
            "sets": len(self.sets),
            "errors": dict(self.errors),
            "error_samples": dict(self.error_samples),
            "warmup_ops": self.warmup_ops,
            "warmup_errors": self.warmup_errors,
            "window_s": self.window_s,
            "hist": both.to_json(),
            "hist_get": Histogram.from_ns(self.gets).to_json(),
            "hist_set": Histogram.from_ns(self.sets).to_json(),
            "loop_lag_ms": _lag_summary(self.loop_lag_ns),
        }


def _lag_summary(lags: list[int]) -> dict[str, float]:
    if not lags:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0, "samples": 0}
    ordered = sorted(lags)
    return {
        "p50": ordered[len(ordered) // 2] / 1e6,
        "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] / 1e6,
        "max": ordered[-1] / 1e6,
        "samples": len(ordered),
    }


def make_keys(count: int) -> list[str]:
    """The key space: ``key:00000000`` ... (12 bytes each)."""
    return [f"key:{i:08d}" for i in range(count)]


def make_value(size: int) -> bytes:
    """A value of ``size`` bytes (not all zeros, so nothing compresses it for free)."""
    pattern = b"peer-ring-benchmark-value-0123456789abcdefghijklmnopqrstuvwxyz"
    return (pattern * (size // len(pattern) + 1))[:size]


def make_sequence(workload: Workload, keys: list[str], seed: int) -> list[tuple[str, bool]]:
    """The precomputed ``(key, is_read)`` sequence of one process."""
    rng = random.Random(seed)
    return [
        (keys[rng.randrange(len(keys))], rng.random() < workload.read_ratio)
        for _ in range(_SEQUENCE)
    ]


async def _sleep_until_ns(deadline_ns: int) -> None:
    delay = (deadline_ns - time.perf_counter_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)


async def run_load(
    get: GetOp,
    set_: SetOp,
    workload: Workload,
    sequence: list[tuple[str, bool]],
    value: bytes,
    schedule: Schedule,
    *,
    on_window: Callable[[str], None] | None = None,
) -> LoadResult:
    """Run the closed loop on this process's event loop and return what was measured.

    Args:
        get / set_: the two operations (``await get(key)``, ``await set_(key, value)``).
        workload: concurrency and bounds.
        sequence: from :func:`make_sequence`.
        value: the value every set writes.
        schedule: the run's shared wall-clock schedule.
        on_window: called with ``"start"`` and ``"end"`` at the measurement window's
            boundaries (CPU time, transport counters and profilers are sampled there).
    """
    load_start, window_start, window_end = schedule.perf_ns()
    result = LoadResult()
    gets = result.gets
    sets = result.sets
    errors = result.errors
    samples = result.error_samples
    budget = [workload.max_ops]
    mask = len(sequence) - 1
    clock = time.perf_counter_ns

    async def worker(offset: int) -> None:
        i = offset
        while budget[0] > 0:
            budget[0] -= 1
            key, is_read = sequence[i & mask]
            i += 1
            started = clock()
            try:
                if is_read:
                    await get(key)
                else:
                    await set_(key, value)
            except Exception as exc:
                now = clock()
                if now >= window_end:
                    return
                if now >= window_start:
                    name = type(exc).__name__
                    errors[name] = errors.get(name, 0) + 1
                    samples.setdefault(name, str(exc)[:300])
                else:
                    result.warmup_errors += 1
                # A failing operation may fail without ever suspending; yield so one task
                # in an error storm cannot starve the others and the transport.
                await asyncio.sleep(0)
                continue
            now = clock()
            if now >= window_start:
                if now >= window_end:
                    return
                (gets if is_read else sets).append(now - started)
            else:
                result.warmup_ops += 1

    async def window_marks() -> None:
        await _sleep_until_ns(window_start)
        if on_window is not None:
            on_window("start")
        began = time.perf_counter_ns()
        # Event-loop lag: how late a 10 ms sleep wakes up. Large values mean the loop was
        # blocked (long synchronous work, GC) or the process was not scheduled (a busy
        # machine); compare with the Redis client processes, which run the same monitor.
        lags = result.loop_lag_ns
        while (now := clock()) < window_end - _LAG_PERIOD_NS:
            await asyncio.sleep(_LAG_PERIOD_NS / 1e9)
            lags.append(max(0, clock() - now - _LAG_PERIOD_NS))
        await _sleep_until_ns(window_end)
        if on_window is not None:
            on_window("end")
        result.window_s = (time.perf_counter_ns() - began) / 1e9

    await _sleep_until_ns(load_start)
    stride = max(1, len(sequence) // max(1, workload.concurrency))
    marks = asyncio.ensure_future(window_marks())
    await asyncio.gather(*(worker(n * stride) for n in range(workload.concurrency)))
    await marks
    return result
