"""The load side of ``tools/bench ratelimit``: what each child process runs.

A child gets its spec as JSON, runs one part (a peer-ring node generating load, a ``limits``
client on Redis, the single-node run, or a Gubernator client) and prints one result line
prefixed with :data:`PREFIX`; ``benchlib.ratelimit`` (the parent) starts them and sums up.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import gc
import itertools
import json
import os
import pstats
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchlib._hist import Histogram
from benchlib._procs import REPO

PREFIX = "BENCH-RATELIMIT "
#: Source folders the children need beyond child_env()'s (the rate limiter itself).
EXTRA_SRC = [REPO / "packages" / "peer-ring-rate-limiter" / "src"]


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


async def open_loop(
    hit: Any,
    keys: list[str],
    rate: float,
    start_at: float,
    warmup: float,
    duration: float,
    seed: int,
    trace: Any = None,
    *,
    phase: float = 0.0,
    arrivals: str = "thread",
) -> dict[str, Any]:
    """Hits started at a fixed ``rate`` per second whether or not earlier ones finished.

    Each latency runs from the hit's *scheduled* start, so a stall that delays the
    following starts counts against them too (no coordinated omission). Hits still
    outstanding beyond :data:`MAX_OUTSTANDING` are not started and count as errors.

    ``arrivals``: what starts the hits. ``"thread"`` (default): a thread sleeps until each
    hit's scheduled time (``time.sleep``, sub-millisecond) and hands it to the loop with
    ``call_soon_threadsafe``, which wakes the loop as a request arriving on a socket
    would. ``"timer"`` (the generator of rounds 1-7): ``asyncio.sleep`` on the loop, whose
    timers (uvloop's, libuv's) have a 1 ms resolution, so a hit started up to about a
    millisecond after its scheduled time, and that lateness counted in its latency (the
    trace's ``scheduled->hit_in``).

    ``phase``: this process's schedule is shifted by ``phase`` intervals. The processes of
    a run share ``start_at``; with the same phase (0, rounds 1-7) they all started a hit at
    the same instants, 3 hits at once every 3/(total rate) s on 2 cores instead of one
    every 1/(total rate), each meeting the others' work on the cores and on the nodes that
    serve them. ``index / processes`` spreads them as independent clients would be (as
    ``benchlib._load.run_open_loop`` does for the KV bench); the rate is unchanged.
    """
    rec = Recorder()
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    interval = 1.0 / rate
    # One instant for every process (start_at is wall time), then this process's phase.
    t_start = time.monotonic() + max(0.0, start_at - time.time()) + phase * interval
    measure_from = t_start + warmup
    stop_at = measure_from + duration
    tasks: set[asyncio.Task[None]] = set()
    cpu = {"start": 0.0}

    async def one(key: str, scheduled: float, measuring: bool) -> None:
        try:
            ok = await hit(key)
        except Exception:  # counted as an error; the load goes on
            if measuring:
                rec.errors += 1
            return
        if measuring:
            rec.lat_ns.append(int((time.monotonic() - scheduled) * 1e9))
            rec.decisions += 1
            rec.allowed += bool(ok)

    def start(scheduled: float) -> None:
        measuring = scheduled >= measure_from
        if measuring and not cpu["start"]:
            cpu["start"] = time.process_time()
            if trace is not None:
                trace.active = True
        key = keys[rng.randrange(len(keys))]
        if trace is not None:
            trace.mark("scheduled", [key], int(scheduled * 1e9))
        if len(tasks) >= MAX_OUTSTANDING:
            rec.errors += measuring
        else:
            task = loop.create_task(one(key, scheduled, measuring))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    schedule = (t_start + i * interval for i in itertools.count())
    if arrivals == "thread":
        await _thread_arrivals(loop, schedule, stop_at, start)
    elif arrivals == "timer":
        for scheduled in schedule:
            if scheduled >= stop_at:
                break
            delay = scheduled - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            start(scheduled)
    else:
        raise ValueError(f"unknown arrivals {arrivals!r}")
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    cpu_end = time.process_time()
    return {
        "decisions": rec.decisions,
        "allowed": rec.allowed,
        "errors": rec.errors,
        "cpu_s": cpu_end - cpu["start"],
        "hist": Histogram.from_ns(rec.lat_ns).to_json(),
    }


async def _thread_arrivals(
    loop: asyncio.AbstractEventLoop,
    schedule: Iterator[float],
    stop_at: float,
    start: Callable[[float], None],
) -> None:
    """Call ``start(t)`` on ``loop`` at each time ``t`` of ``schedule`` before ``stop_at``
    (monotonic seconds), from a thread that sleeps until each one."""
    done: asyncio.Future[None] = loop.create_future()
    stop = threading.Event()

    def finish() -> None:
        if not done.done():
            done.set_result(None)

    def arrive() -> None:
        try:
            for scheduled in schedule:
                if scheduled >= stop_at or stop.is_set():
                    break
                delay = scheduled - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                loop.call_soon_threadsafe(start, scheduled)
            loop.call_soon_threadsafe(finish)
        except RuntimeError:  # the loop closed under us (the run was cancelled)
            pass

    thread = threading.Thread(target=arrive, name="bench-arrivals", daemon=True)
    thread.start()
    try:
        await done
    finally:
        stop.set()


#: Open loop: hits in flight per process beyond which no new one is started.
MAX_OUTSTANDING = 10_000


async def peer_ring_child(spec: dict[str, Any]) -> dict[str, Any]:
    from peer_ring.core import PeerRingConfig
    from peer_ring.discovery.static import StaticDiscovery
    from peer_ring.ratelimit import Limit, RateLimiter

    trace = None
    if spec.get("trace_path"):
        from benchlib.ratelimit_trace import HitTrace, install, install_node

        trace = HitTrace()
        trace.watch_gc()
        install(trace)  # before the limiter is made: its handlers are bound then
    extra: dict[str, Any] = {}
    if "max_batches" in spec:  # 0: no bound
        extra["max_batches_in_flight"] = spec["max_batches"] or None
    if "light" in spec:  # 0: off (only max_batches_in_flight)
        extra["light_in_flight"] = spec["light"] or None
    if "relay" in spec:  # 0: the owner answers every forwarded hit (the old protocol)
        # n > 0: relay forwarded batches of at most n hits (relay_max_batch)
        extra["relay"] = bool(spec["relay"])
        if spec["relay"]:
            extra["relay_max_batch"] = spec["relay"]
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
    if not spec.get("fresh_gc"):
        # A new process has not had a full collection yet: its first comes once gen1 has
        # been collected 10 times (the collector's default), a second or two into the
        # load, and walks every object of the process (about 35,000 here, ~15 ms on a
        # quiet core, longer on a busy one), stalling that node inside the measured
        # window. A service that has been up for a while did it long ago; so here too.
        gc.collect()
    limit = Limit(spec["limit"], 1.0, algorithm=spec["algorithm"])
    mode = spec.get("mode", "owner")
    keys = spec["keys"]
    if spec.get("key_count"):
        keys = [f"user:{i}" for i in range(spec["key_count"])]
    if spec.get("forwarded_only"):
        # Only keys another node owns: every hit is forwarded (the latency target's case).
        keys = [k for k in keys if rl.node.preference_list(k.encode(), 1)[0] != spec["me"]]

    async def plain_hit(key: str) -> bool:
        return (await rl.hit(key, limit, mode=mode)).allowed

    hit: Any = plain_hit
    watcher: asyncio.Task[None] | None = None
    if trace is not None:
        install_node(rl, trace)
        traced = trace
        watcher = asyncio.get_running_loop().create_task(trace.watch_loop())
        watcher.add_done_callback(lambda t: None if t.cancelled() else t.exception())

        async def traced_hit(key: str) -> bool:
            traced.mark("hit_in", [key])
            ok = (await rl.hit(key, limit, mode=mode)).allowed
            traced.mark("done", [key])
            return ok

        hit = traced_hit

    prof = _profiler(spec)
    try:
        if spec.get("rate"):
            out = await open_loop(
                hit,
                keys,
                spec["rate"],
                spec["start_at"],
                spec["warmup"],
                spec["duration"],
                spec["seed"],
                trace,
                # Spread the processes' schedules (see open_loop) unless asked not to.
                phase=0.0
                if spec.get("aligned")
                else spec["peers"].index(spec["me"]) / len(spec["peers"]),
                arrivals=spec.get("arrivals", "thread"),
            )
        else:
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
        if trace is not None:
            trace.active = False
            trace.dump(Path(spec["trace_path"]))
        if watcher is not None:
            watcher.cancel()
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


async def echo_child(spec: dict[str, Any]) -> dict[str, Any]:
    """The floor's server: echoes 16-byte messages until ``stop_at``."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                writer.write(await reader.readexactly(16))

    server = await asyncio.start_server(serve, spec["host"], spec["port"])
    async with server:
        await asyncio.sleep(max(0.0, spec["stop_at"] - time.time()))
    return {"decisions": 0, "allowed": 0, "errors": 0, "cpu_s": 0.0, "hist": None}


async def ping_child(spec: dict[str, Any]) -> dict[str, Any]:
    """The floor's client: one bare asyncio TCP round trip per "hit", in an open loop at
    ``rate``: what one round trip between two processes costs on this machine now."""
    await asyncio.sleep(max(0.0, spec["start_at"] - 1.0 - time.time()))
    # The echo child may still be starting on a loaded machine: retry for a while.
    for attempt in range(100):
        try:
            reader, writer = await asyncio.open_connection(spec["host"], spec["port"])
            break
        except ConnectionRefusedError:
            if attempt == 99:
                raise
            await asyncio.sleep(0.1)
    lock = asyncio.Lock()

    async def hit(key: str) -> bool:
        async with lock:  # one connection: round trips one after the other
            writer.write(b"x" * 16)
            await reader.readexactly(16)
        return True

    try:
        return await open_loop(
            hit,
            ["k"],
            spec["rate"],
            spec["start_at"],
            spec["warmup"],
            spec["duration"],
            spec["seed"],
            arrivals=spec.get("arrivals", "thread"),
        )
    finally:
        writer.close()


def child(spec: dict[str, Any]) -> None:
    """Entry point of a child process: run its part, print one JSON line."""
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    if os.environ.get("PEER_RING_BENCH_GC") == "off":  # diagnosis: no collector pauses
        gc.disable()
    kind = spec["kind"]
    if kind == "gubernator":
        from benchlib.ratelimit_gubernator import gubernator_child

        out = asyncio.run(gubernator_child(spec, closed_loop))
        print(PREFIX + json.dumps(out), flush=True)
        return
    fn = {
        "peer-ring": peer_ring_child,
        "limits": limits_child,
        "local": local_child,
        "echo": echo_child,
        "ping": ping_child,
    }[kind]
    if kind == "peer-ring" and spec.get("core_gc"):
        from peer_ring.core import run as core_run

        out = core_run(fn(spec), gc_threshold=20_000, gc_freeze_after_start=True)
    else:
        out = asyncio.run(fn(spec))
    print(PREFIX + json.dumps(out), flush=True)
