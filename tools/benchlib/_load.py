"""The load generators, identical for peer-ring and for Redis.

Closed loop (:func:`run_load`, ``rate == 0``): ``concurrency`` asyncio tasks each loop "pick
the next operation, await it, record its latency", so exactly ``concurrency`` operations are
in flight per process (the offered load adapts to the system's speed, as an application's
request handlers would).

Open loop (:func:`run_open_loop`, ``rate > 0``): operations start at a fixed rate whatever
the system does, one Task each, and the latency is counted from each operation's *intended*
start time, so a stalled event loop or a queue shows in the percentiles instead of slowing
the offered load down (no coordinated omission). The event loop's timers have a
millisecond resolution, so the ticker wakes at most once a millisecond and starts every
operation due by then or within the next half millisecond (one started early counts from
its actual start); how late it started them is reported as the send lag.

Both count the operations still pending past their deadline: an operation whose own wait
(from when it was started) exceeded ``overdue_s`` (the node's request timeout plus a grace),
and those still pending when the run ends (then cancelled). The answer must be 0: every
peer-ring operation ends by its ``request_timeout``.

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
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from benchlib._hist import Histogram


class _OpSink(Protocol):
    def append(self, op: tuple[int, int, str], /) -> None: ...


GetOp = Callable[[str], Awaitable[Any]]
SetOp = Callable[[str, bytes], Awaitable[Any]]

#: Length of the precomputed operation sequence (a power of two: index with a mask).
_SEQUENCE = 1 << 16
#: Closed loop: each task yields to the loop every this many operations + 1.
_YIELD_MASK = 31
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
        rate: open loop: operations started per second by this process (0: closed loop).
        overdue_s: an operation waiting longer than this is counted "past its deadline".
        stagger: open loop: each process's schedule is offset by ``index / processes`` of
            its interval (see :func:`run_open_loop`); False: every process starts its
            operations at the same instants (lockstep, the schedule before 2026-12-07).
    """

    keys: int = 10_000
    value_size: int = 100
    read_ratio: float = 0.5
    concurrency: int = 64
    max_ops: int = 20_000_000
    seed: int = 1
    rate: float = 0.0
    overdue_s: float = 3.0
    stagger: bool = True


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
    overdue: int = 0  # operations that waited longer than overdue_s (completed late)
    overdue_max_ns: int = 0
    pending_at_end: int = 0  # still pending overdue_s after the window: cancelled
    send_lag_ns: list[int] = field(default_factory=list)  # open loop: start - intended
    shed: int = 0  # open loop: not started, the in-flight bound was reached

    def note_wait(self, waited_ns: int, overdue_ns: int) -> None:
        """Count an operation whose own wait exceeded the deadline bound."""
        if waited_ns > overdue_ns:
            self.overdue += 1
            if waited_ns > self.overdue_max_ns:
                self.overdue_max_ns = waited_ns

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
            "overdue": self.overdue,
            "overdue_max_ms": self.overdue_max_ns / 1e6,
            "pending_at_end": self.pending_at_end,
            "send_lag_ms": _lag_summary(self.send_lag_ns),
            "shed": self.shed,
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


def _window_marks(
    result: LoadResult,
    window_start: int,
    window_end: int,
    on_window: Callable[[str], None] | None,
) -> Awaitable[None]:
    async def marks() -> None:
        await _sleep_until_ns(window_start)
        if on_window is not None:
            on_window("start")
        began = time.perf_counter_ns()
        # Event-loop lag: how late a 10 ms sleep wakes up. Large values mean the loop was
        # blocked (long synchronous work, GC) or the process was not scheduled (a busy
        # machine); compare with the Redis client processes, which run the same monitor.
        lags = result.loop_lag_ns
        clock = time.perf_counter_ns
        while (now := clock()) < window_end - _LAG_PERIOD_NS:
            await asyncio.sleep(_LAG_PERIOD_NS / 1e9)
            lags.append(max(0, clock() - now - _LAG_PERIOD_NS))
        await _sleep_until_ns(window_end)
        if on_window is not None:
            on_window("end")
        result.window_s = (time.perf_counter_ns() - began) / 1e9

    return marks()


async def _drain(
    tasks: Iterable[asyncio.Future[None]],
    result: LoadResult,
    window_end: int,
    overdue_s: float,
) -> None:
    """Wait (bounded) for the operations still running after the window, then count the
    ones still pending past their deadline and cancel them."""
    await _sleep_until_ns(window_end)
    running = [t for t in tasks if not t.done()]
    if not running:
        return
    _, pending = await asyncio.wait(running, timeout=overdue_s + 0.5)
    result.pending_at_end += len(pending)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=5.0)


async def run_load(
    get: GetOp,
    set_: SetOp,
    workload: Workload,
    sequence: list[tuple[str, bool]],
    value: bytes,
    schedule: Schedule,
    *,
    on_window: Callable[[str], None] | None = None,
    trace: _OpSink | None = None,
    phase: float = 0.0,
) -> LoadResult:
    """Run the workload (closed loop, or open loop when ``workload.rate`` is set) on this
    process's event loop and return what was measured.

    Args:
        get / set_: the two operations (``await get(key)``, ``await set_(key, value)``).
        workload: concurrency and bounds.
        sequence: from :func:`make_sequence`.
        value: the value every set writes.
        schedule: the run's shared wall-clock schedule.
        on_window: called with ``"start"`` and ``"end"`` at the measurement window's
            boundaries (CPU time, transport counters and profilers are sampled there).
        trace: open loop only: ``(intended start ns, latency ns, key)`` is appended for
            every operation that succeeded (``tools/bench --trace``, :mod:`benchlib._trace`).
        phase: open loop only: this process's offset in its schedule, a fraction of the
            interval between two of its operations (``index / processes``, see
            :func:`run_open_loop`).
    """
    if workload.rate > 0:
        return await run_open_loop(
            get,
            set_,
            workload,
            sequence,
            value,
            schedule,
            on_window=on_window,
            trace=trace,
            phase=phase,
        )
    load_start, window_start, window_end = schedule.perf_ns()
    result = LoadResult()
    gets = result.gets
    sets = result.sets
    errors = result.errors
    samples = result.error_samples
    budget = [workload.max_ops]
    mask = len(sequence) - 1
    clock = time.perf_counter_ns
    overdue_ns = int(workload.overdue_s * 1e9)
    note_wait = result.note_wait

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
                if now - started > overdue_ns:
                    note_wait(now - started, overdue_ns)
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
            if now - started > overdue_ns:
                note_wait(now - started, overdue_ns)
            if now >= window_start:
                if now >= window_end:
                    return
                (gets if is_read else sets).append(now - started)
            else:
                result.warmup_ops += 1
            if not i & _YIELD_MASK:
                # An operation served locally may complete without suspending (a 1-node
                # cluster, a local read): yield now and then so the other tasks and the
                # window's marks run.
                await asyncio.sleep(0)

    await _sleep_until_ns(load_start)
    stride = max(1, len(sequence) // max(1, workload.concurrency))
    marks = asyncio.ensure_future(_window_marks(result, window_start, window_end, on_window))
    workers = [asyncio.ensure_future(worker(n * stride)) for n in range(workload.concurrency)]
    await _drain(workers, result, window_end, workload.overdue_s)
    await marks
    return result


#: Open loop: at most this many operations in flight per process; past it, operations are
#: shed (counted) rather than piling up without bound when the system falls behind.
MAX_OPEN_IN_FLIGHT = 20_000
#: Open loop: operations due within this many ns are started now (half the timer tick).
_OPEN_EARLY_NS = 500_000


def due_ns(load_start: int, i: int, interval: float, phase: float) -> int:
    """When operation ``i`` of a process with this ``phase`` is due (see
    :func:`run_open_loop`), on the ``perf_counter_ns`` clock."""
    return load_start + int((i + phase) * interval)


async def run_open_loop(
    get: GetOp,
    set_: SetOp,
    workload: Workload,
    sequence: list[tuple[str, bool]],
    value: bytes,
    schedule: Schedule,
    *,
    on_window: Callable[[str], None] | None = None,
    trace: _OpSink | None = None,
    phase: float = 0.0,
) -> LoadResult:
    """Start ``workload.rate`` operations per second (see the module's docstring).

    Operation ``i`` is due at ``load start + (i + phase) * interval``. The processes of a
    run share the schedule's start, so with the same phase they would all start an
    operation at the same instants: N operations at once every N / (total rate) seconds
    instead of one every 1 / (total rate), and each one meeting the others' start-up on
    the cores (and, for peer-ring, on the loop of the node that serves it, busy starting
    its own). ``phase = index / processes`` spreads them evenly, as independent clients
    would be; the offered rate is unchanged and both systems get the same schedules.
    """
    load_start, window_start, window_end = schedule.perf_ns()
    result = LoadResult()
    gets = result.gets
    sets = result.sets
    errors = result.errors
    samples = result.error_samples
    clock = time.perf_counter_ns
    overdue_ns = int(workload.overdue_s * 1e9)
    note_wait = result.note_wait
    loop = asyncio.get_running_loop()
    in_flight: set[asyncio.Future[None]] = set()
    discard = in_flight.discard

    async def one(key: str, is_read: bool, due: int) -> None:
        started = clock()
        intended = min(due, started)
        try:
            if is_read:
                await get(key)
            else:
                await set_(key, value)
        except Exception as exc:
            now = clock()
            note_wait(now - started, overdue_ns)
            if window_start <= due < window_end:
                name = type(exc).__name__
                errors[name] = errors.get(name, 0) + 1
                samples.setdefault(name, str(exc)[:300])
            elif due < window_start:
                result.warmup_errors += 1
            return
        now = clock()
        if now - started > overdue_ns:
            note_wait(now - started, overdue_ns)
        if trace is not None:
            trace.append((intended, now - intended, key))
        # Counted by intended start: an operation due inside the window counts even when
        # it completes after it (its latency is what a late system makes it).
        if window_start <= due < window_end:
            (gets if is_read else sets).append(now - intended)
        elif due < window_start:
            result.warmup_ops += 1

    interval = 1e9 / workload.rate
    mask = len(sequence) - 1
    lags = result.send_lag_ns
    marks = asyncio.ensure_future(_window_marks(result, window_start, window_end, on_window))
    await _sleep_until_ns(load_start)
    i = 0
    limit = min(workload.max_ops, int((window_end - load_start) / interval) + 1)
    while i < limit:
        now = clock()
        horizon = now + _OPEN_EARLY_NS
        due = due_ns(load_start, i, interval, phase)
        while due <= horizon and i < limit:
            key, is_read = sequence[i & mask]
            if due >= window_start:
                lags.append(max(0, now - due))
            if len(in_flight) >= MAX_OPEN_IN_FLIGHT:
                if due >= window_start:
                    result.shed += 1
                    errors["Shed"] = errors.get("Shed", 0) + 1
                    samples.setdefault("Shed", f"{MAX_OPEN_IN_FLIGHT} operations in flight")
            else:
                task = loop.create_task(one(key, is_read, due))
                in_flight.add(task)
                task.add_done_callback(discard)
            i += 1
            due = due_ns(load_start, i, interval, phase)
        if i >= limit:
            break
        # The loop's timers have a millisecond resolution: sleep at least that long (a
        # shorter sleep would spin) and start whatever fell due meanwhile.
        await asyncio.sleep(max(0.001, (due - clock()) / 1e9))
    await _drain(in_flight, result, window_end, workload.overdue_s)
    await marks
    return result
