"""One benchmark process: a peer-ring node with its embedded load generator, or a Redis client.

Run as ``python -m benchlib._worker '<spec JSON>'`` by the parent (:mod:`benchlib._procs`).
It talks to the parent with JSON lines: commands arrive on stdin, events leave on stdout
prefixed with :data:`PREFIX` (anything else on stdout is ignored; logs go to stderr). The
phases, each acknowledged so that the parent can keep every process in step:

1. start (node: ``KVStore`` listening; Redis: connected) -> ``{"event": "started"}``
2. ``{"cmd": "prefill"}`` -> this process writes its share of the keys -> ``"prefilled"``
3. ``{"cmd": "run", "start_at": t}`` -> warm-up then measurement on the shared schedule ->
   ``{"event": "result", ...}``
4. ``{"cmd": "stop"}`` -> a node stays up until then, because the other nodes' load still
   reaches it; then it leaves and the process exits 0.

If stdin closes (the parent died), the process exits. Runs on uvloop
(``peer_ring.core.run`` picks it when installed; the Redis client uses it too).
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import functools
import gc
import json
import logging
import os
import resource
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from benchlib._load import (
    LoadResult,
    Schedule,
    Workload,
    make_keys,
    make_sequence,
    make_value,
    run_load,
)
from benchlib._trace import Tracer

#: Marks the protocol lines on stdout.
PREFIX = "@@bench "

_PREFILL_BATCH = 500


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux; else no-op).

    Belt and braces with the parent's ``finally``: a SIGKILLed ``tools/bench`` must not
    leave nodes holding their ports.
    """
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def _emit(event: str, **fields: Any) -> None:
    sys.stdout.write(PREFIX + json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


class _Commands:
    """Command lines from the parent, read from stdin by the event loop itself.

    A pipe reader on the loop, not a thread: a thread blocked on stdin would show up in
    profiles and add a GIL participant to the process being measured.
    """

    def __init__(self) -> None:
        self._reader: asyncio.StreamReader | None = None

    async def _open(self) -> asyncio.StreamReader:
        if self._reader is None:
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader(limit=1 << 20)
            await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", buffering=0)
            )
            self._reader = reader
        return self._reader

    async def expect(self, name: str) -> dict[str, Any]:
        """The next command, which must be ``name``; exits when the parent went away."""
        reader = await self._open()
        while True:
            line = await reader.readline()
            if not line:
                raise SystemExit("stdin closed: the parent went away")
            if line.strip():
                break
        command: dict[str, Any] = json.loads(line)
        if command.get("cmd") != name:
            raise RuntimeError(f"expected command {name!r}, got {command!r}")
        return command


def _cpu_seconds() -> float:
    # RUSAGE_SELF covers every thread of the process, so gRPC's C-core threads (and
    # redis-py's nothing) are included: the honest cost of serving the load.
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _thread_cpu() -> dict[str, float]:
    """CPU seconds per thread group of this process: ``main`` (the event loop's thread)
    and the others by name (gRPC's ``event_engine`` pool, its poller thread...)."""
    ticks = os.sysconf("SC_CLK_TCK")
    pid = os.getpid()
    out: dict[str, float] = {}
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            with open(f"/proc/self/task/{task}/comm") as comm:
                name = comm.read().strip()
        except OSError:  # the thread ended meanwhile
            continue
        group = "main" if int(task) == pid else name
        out[group] = out.get(group, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return out


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class GcMeter:
    """Counts garbage collections and their CPU time (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.cpu_s = [0.0, 0.0, 0.0]
        self.max_s = [0.0, 0.0, 0.0]
        self._began = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.thread_time()
            return
        took = time.thread_time() - self._began
        gen = info["generation"]
        self.count[gen] += 1
        self.cpu_s[gen] += took
        self.max_s[gen] = max(self.max_s[gen], took)

    def summary(self, ops: int) -> list[dict[str, float]]:
        """Per generation: collections per 1000 operations, CPU per operation, longest."""
        return [
            {
                "generation": gen,
                "per_1000_ops": round(self.count[gen] / ops * 1000, 2),
                "cpu_us_per_op": round(self.cpu_s[gen] / ops * 1e6, 3),
                "max_ms": round(self.max_s[gen] * 1e3, 2),
            }
            for gen in range(3)
        ]


class _Meter:
    """Samples CPU time and counters at the window's boundaries; runs the profiler."""

    def __init__(
        self, counters: Callable[[], dict[str, int]] | None, profile_path: str | None
    ) -> None:
        self._counters = counters
        self._profile_path = profile_path
        self._profiler = cProfile.Profile() if profile_path else None
        self.cpu_s = 0.0
        self.threads: dict[str, float] = {}
        self.counters: dict[str, int] = {}
        self._cpu0 = 0.0
        self._threads0: dict[str, float] = {}
        self._counters0: dict[str, int] = {}
        # Garbage collections stop the event loop: counted, with their CPU and the longest.
        self.gc = GcMeter()

    def __call__(self, mark: str) -> None:
        if mark == "start":
            gc.callbacks.append(self.gc)
            self._cpu0 = _cpu_seconds()
            self._threads0 = _thread_cpu()
            self._counters0 = self._counters() if self._counters else {}
            if self._profiler is not None:
                self._profiler.enable()
            return
        if self.gc in gc.callbacks:
            gc.callbacks.remove(self.gc)
        if self._profiler is not None:
            self._profiler.disable()
            self._profiler.dump_stats(str(self._profile_path))
        self.cpu_s = _cpu_seconds() - self._cpu0
        self.threads = {
            name: round(cpu - self._threads0.get(name, 0.0), 3)
            for name, cpu in _thread_cpu().items()
        }
        if self._counters:
            after = self._counters()
            self.counters = {k: v - self._counters0.get(k, 0) for k, v in after.items()}


async def _measure(
    spec: dict[str, Any],
    commands: _Commands,
    get: Callable[[str], Awaitable[Any]],
    set_: Callable[[str, bytes], Awaitable[Any]],
    prefill: Callable[[list[str], bytes], Awaitable[None]],
    counters: Callable[[], dict[str, int]] | None,
    owners: Callable[[str], list[int]] | None = None,
) -> None:
    """Phases 2 and 3, common to both systems (``owners``: a key's replicas as process
    indexes, for ``--trace``)."""
    workload = Workload(**spec["workload"])
    keys = make_keys(workload.keys)
    value = make_value(workload.value_size)
    index = int(spec["index"])
    sequence = make_sequence(workload, keys, workload.seed * 1000 + index)

    await commands.expect("prefill")
    began = time.perf_counter()
    await prefill(keys[index :: int(spec["processes"])], value)
    _emit("prefilled", seconds=time.perf_counter() - began)

    command = await commands.expect("run")
    threshold = int(spec.get("gc_threshold", 0))
    if threshold > 0:  # --gc-threshold: the host's tuning, the same for both systems
        gc.set_threshold(threshold, *gc.get_threshold()[1:])
    if spec.get("gc_freeze") and spec["role"] == "redis":
        # --gc-freeze: peer-ring nodes froze at start (run(gc_freeze_after_start=True));
        # the Redis clients freeze here, after their start-up, the same tuning.
        gc.collect()
        gc.freeze()
    schedule = Schedule(float(command["start_at"]), float(spec["warmup"]), float(spec["duration"]))
    # Open loop: the processes' schedules interleave (see run_open_loop), both systems alike.
    phase = index / int(spec["processes"]) if workload.stagger else 0.0
    meter = _Meter(counters, spec.get("profile_path"))
    trace_path = spec.get("trace_path")
    if trace_path:
        result = await _traced(
            Path(trace_path), owners, get, set_, workload, sequence, value, schedule, meter, phase
        )
    else:
        result = await run_load(
            get, set_, workload, sequence, value, schedule, on_window=meter, phase=phase
        )
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _emit(
        "result",
        index=index,
        pid=os.getpid(),
        loop=type(asyncio.get_running_loop()).__module__,
        cpu_s=meter.cpu_s,
        thread_cpu_s=meter.threads,
        peak_rss_bytes=usage.ru_maxrss * 1024,
        rss_bytes=_rss_bytes(),
        counters=meter.counters,
        gc=meter.gc.summary(max(1, len(result.gets) + len(result.sets))),
        **result.to_json(),
    )


async def _traced(
    path: Path,
    owners: Callable[[str], list[int]] | None,
    get: Callable[[str], Awaitable[Any]],
    set_: Callable[[str, bytes], Awaitable[Any]],
    workload: Workload,
    sequence: list[tuple[str, bool]],
    value: bytes,
    schedule: Schedule,
    meter: _Meter,
    phase: float,
) -> LoadResult:
    """``run_load`` with the :mod:`benchlib._trace` recorders on (``--trace``)."""
    loop = asyncio.get_running_loop()
    tracer = Tracer()
    tracer.install(loop)
    _, window_start, window_end = schedule.perf_ns()
    monitor = asyncio.ensure_future(tracer.monitor(window_start, window_end))
    try:
        result = await run_load(
            get,
            set_,
            workload,
            sequence,
            value,
            schedule,
            on_window=meter,
            trace=tracer.ops,
            phase=phase,
        )
        await monitor
    finally:
        monitor.cancel()
        tracer.uninstall(loop)
    keys = set(tracer.ops.keys)
    tracer.dump(path, {key: owners(key) for key in keys} if owners else None)
    return result


async def _prefill_batches(
    keys: list[str], value: bytes, write: Callable[[dict[Any, Any]], Awaitable[Any]]
) -> None:
    for start in range(0, len(keys), _PREFILL_BATCH):
        batch: dict[Any, Any] = dict.fromkeys(keys[start : start + _PREFILL_BATCH], value)
        # Bounded retries: a node that is still opening its streams answers
        # PeerUnavailableError for a moment.
        for attempt in range(50):
            try:
                await write(batch)
                break
            except Exception:
                if attempt == 49:
                    raise
                await asyncio.sleep(0.1)


async def _node(spec: dict[str, Any]) -> None:
    from peer_ring.core import PeerRingConfig
    from peer_ring.discovery.static import StaticDiscovery
    from peer_ring.kv import KVStore

    commands = _Commands()
    replication = int(spec["replication"])
    quorum = int(spec["quorum"])
    discovery = StaticDiscovery(spec["peers"], self_address=spec["address"])
    config = PeerRingConfig(
        request_timeout=float(spec["request_timeout"]),
        transport=str(spec.get("transport", "grpc")),
        read_fanout=str(spec.get("read_fanout", "quorum")),
        **spec.get("node_config", {}),
    )
    async with KVStore(discovery, replication=replication, quorum=quorum, config=config) as kv:
        _emit("started", address=kv.node.address)
        transport = kv.node.transport
        transport_stats = getattr(transport, "stats", None)

        def stats() -> dict[str, int]:
            # The transport's counters, and the quorum reads' extra requests (speculative
            # after read_speculate_after, retried after a refusal): reads_speculative,
            # reads_retried in the run's "transport" counters.
            out: dict[str, int] = dict(transport_stats()) if transport_stats else {}
            reads = kv.node.sync_status().get("reads", {})
            for name, value in reads.items():
                out[f"reads_{name}"] = int(value)
            return out

        async def prefill(keys: list[str], value: bytes) -> None:
            # Every node is started by now: wait for this one's initial sync (reads of a
            # partition still being pulled are refused), where the store has it.
            wait_ready = getattr(kv, "wait_ready", None)
            if wait_ready is not None:
                await wait_ready(60.0)
            connect = getattr(transport, "connect", None)
            if connect is not None:  # open every stream before the first batch
                for peer in spec["peers"]:
                    if peer != kv.node.address:
                        with contextlib.suppress(Exception):
                            await connect(peer)
            # Every replica gets the prefill: quorum = replication.
            await _prefill_batches(
                keys,
                value,
                lambda batch: kv.mset(batch, quorum=replication, replication=replication),
            )

        # partial() of the bound methods, not wrapper coroutines: the benchmark measures
        # the store, not an extra coroutine frame of the harness (Redis gets the same).
        get = functools.partial(kv.get, quorum=quorum, replication=replication)
        set_ = functools.partial(kv.set, quorum=quorum, replication=replication)
        peers: list[str] = list(spec["peers"])
        node = kv.node

        def owners(key: str) -> list[int]:
            return [peers.index(a) for a in node.preference_list(key.encode(), replication)]

        await _measure(spec, commands, get, set_, prefill, stats, owners)
        await commands.expect("stop")


async def _redis(spec: dict[str, Any]) -> None:
    import redis.asyncio as aioredis

    commands = _Commands()
    workload = Workload(**spec["workload"])
    # One connection per in-flight operation, as redis.asyncio's pool opens them on demand
    # under concurrency (bounded so a bug cannot open thousands).
    # A blocking pool: in an open loop a burst beyond the bound waits for a connection
    # (queueing, counted in the latency) instead of failing.
    pool = aioredis.BlockingConnectionPool(
        host=spec["redis_host"],
        port=int(spec["redis_port"]),
        max_connections=workload.concurrency + 4,
        timeout=None,
    )
    client = aioredis.Redis(connection_pool=pool)
    try:
        await client.ping()
        _emit("started", address=f"{spec['redis_host']}:{spec['redis_port']}")

        async def prefill(keys: list[str], value: bytes) -> None:
            await _prefill_batches(keys, value, client.mset)
            # Open every pooled connection now: opening one costs several round trips
            # (redis-py's handshake), which an open loop would otherwise pay mid-run.
            await asyncio.gather(*(client.ping() for _ in range(workload.concurrency)))

        await _measure(spec, commands, client.get, client.set, prefill, None)
        await commands.expect("stop")
    finally:
        await client.aclose()
        await pool.aclose()


def main() -> None:
    """Entry point: ``python -m benchlib._worker '<spec JSON>'``."""
    die_with_parent()
    spec: dict[str, Any] = json.loads(sys.argv[1])
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format=f"%(asctime)s {spec['role']}{spec['index']} %(name)s %(levelname)s %(message)s",
    )
    # Both systems on the same loop: uvloop unless --no-uvloop (peer_ring.core.run is
    # what an application embedding peer-ring would call).
    from peer_ring.core import run

    coro = _node(spec) if spec["role"] == "node" else _redis(spec)
    try:
        run(
            coro,
            use_uvloop=bool(spec.get("uvloop", True)),
            gc_freeze_after_start=bool(spec.get("gc_freeze", False)),
        )
    except SystemExit:
        raise
    except BaseException:
        _emit("error", message=traceback.format_exc())
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
