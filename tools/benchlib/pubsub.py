"""``tools/bench pubsub``: peer-ring-pubsub vs Redis Streams, same workload, one invocation.

Each system gets the same load from Python in one process: ``--concurrency`` publishers
(publish / XADD of ``--size`` bytes) while one consumer-group member consumes and acks
(subscribe(group=...) + ack / XREADGROUP + XACK). Two phases per system:

1. *throughput*: publishers as fast as they can for ``--duration`` seconds; reports the
   publish rate (acknowledged publishes/s), the end-to-end rate (consumed and acked/s),
   errors, and publish latency percentiles;
2. *latency*: a fixed offered rate (``--rate`` messages/s) for ``--duration`` seconds;
   reports end-to-end latency (publish call to receipt by the consumer) p50/p99.

peer-ring runs as N node processes (``--nodes 1 3``; N=1 is R1/W1, N=3 is R3/W2) each
embedding a ``PubSub``; the load runs inside node 0 (the embedded deployment). Redis runs as
a ``redis-server`` process and one client process running the same load through
redis.asyncio. Speed is never pass/fail: the exit status is non-zero only when a run could
not be made.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib._hist import Histogram
from benchlib._procs import REPO, RedisServer, child_env, free_port, redis_server_binary

PREFIX = "BENCH-PUBSUB "
TOPIC_PARTITIONS = 8


# ------------------------------------------------------------------ the load
class Recorder:
    """Counts and latencies of one phase (the window excludes the warm-up)."""

    def __init__(self) -> None:
        self.published = 0
        self.consumed = 0
        self.errors = 0
        self.publish_ns: list[int] = []
        self.e2e_ns: list[int] = []
        self.measuring = False
        self.cpu_s = 0.0  # CPU seconds of this (load) process over the measured window
        self.peer_cpu_s = 0.0  # ... and of the other processes of the system (nodes, server)
        self.peer_pids: list[int] = []
        self.requests = -1  # requests between the nodes in the window (-1: not counted)

    def summary(self, duration: float) -> dict[str, Any]:
        return {
            "publish_per_s": round(self.published / duration, 1),
            # CPU time of the load process per consumed message: steadier than rates on a
            # shared machine (for N=1 it is the whole system's cost; for Redis, the client's).
            "load_cpu_us_per_msg": round(1e6 * self.cpu_s / max(self.consumed, 1), 1),
            # Every process of the system (other nodes, redis-server) per consumed message.
            "system_cpu_us_per_msg": round(
                1e6 * (self.cpu_s + self.peer_cpu_s) / max(self.consumed, 1), 1
            ),
            "e2e_per_s": round(self.consumed / duration, 1),
            # Every request one node wrote to another (the transports' own counters).
            "requests_per_1000_msgs": (
                round(1000 * self.requests / max(self.consumed, 1), 1)
                if self.requests >= 0
                else None
            ),
            "errors": self.errors,
            "publish_ms": Histogram.from_ns(self.publish_ns).summary_ms(),
            "e2e_ms": Histogram.from_ns(self.e2e_ns).summary_ms(),
        }


def _cpu_of(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by ``pids`` (Linux /proc; 0 elsewhere)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def _payload(size: int) -> bytes:
    # The first 8 bytes carry the send time (perf_counter_ns) for the end-to-end latency.
    return time.perf_counter_ns().to_bytes(8, "big") + b"x" * max(0, size - 8)


def _received(rec: Recorder, data: bytes) -> None:
    if rec.measuring:
        rec.consumed += 1
        rec.e2e_ns.append(time.perf_counter_ns() - int.from_bytes(data[:8], "big"))


async def _phase(
    publish: Any, rec: Recorder, spec: dict[str, Any], rate: float | None
) -> dict[str, Any]:
    """Run publishers (closed loop, or paced at ``rate``) for warm-up + duration."""
    size, conc = spec["size"], spec["concurrency"]
    stop_at = time.monotonic() + spec["warmup"] + spec["duration"]

    async def one() -> None:
        t0 = time.perf_counter_ns()
        try:
            await publish(_payload(size))
        except Exception:
            rec.errors += rec.measuring
            return
        if rec.measuring:
            rec.published += 1
            rec.publish_ns.append(time.perf_counter_ns() - t0)

    async def closed_loop() -> None:
        while time.monotonic() < stop_at:
            await one()

    async def paced() -> None:
        assert rate is not None
        start = time.monotonic()
        sent = 0
        inflight: set[asyncio.Task[None]] = set()
        while (now := time.monotonic()) < stop_at:
            due = int((now - start) * rate)
            while sent < due and len(inflight) < 4096:
                task = asyncio.ensure_future(one())
                inflight.add(task)
                task.add_done_callback(inflight.discard)
                sent += 1
            await asyncio.sleep(0.001)
        await asyncio.gather(*inflight)

    count = spec.get("count_requests")  # () -> requests sent so far by every node, or None

    async def window() -> None:
        await asyncio.sleep(spec["warmup"])
        rec.measuring = True
        cpu, peers = time.process_time(), _cpu_of(spec.get("peer_pids", []))
        sent = count() if count else None
        await asyncio.sleep(spec["duration"])
        rec.measuring = False
        rec.cpu_s = time.process_time() - cpu
        rec.peer_cpu_s = _cpu_of(spec.get("peer_pids", [])) - peers
        if count and sent is not None:
            now = count()
            rec.requests = now - sent if now is not None else -1

    runners = [paced()] if rate else [closed_loop() for _ in range(conc)]
    await asyncio.gather(window(), *runners)
    return rec.summary(spec["duration"])


async def pubsub_load(spec: dict[str, Any]) -> dict[str, Any]:
    from peer_ring.core import PeerRingConfig
    from peer_ring.discovery.static import StaticDiscovery
    from peer_ring.pubsub import PubSub

    n, w = spec["replication"], spec["quorum"]
    ps = PubSub(
        StaticDiscovery(spec["peers"], self_address=spec["self"]),
        replication=n,
        quorum=w,
        config=PeerRingConfig(
            replication=n, quorum=w, anti_entropy_interval=None, transport=spec["transport"]
        ),
    )
    trace = None
    if spec.get("trace"):  # --trace: per-stage times of the latency phase's messages
        from benchlib.pubsub_trace import Trace, install

        trace = Trace(b"bench-latency/")
        trace.watch_gc()
        install(ps, trace)
    async with ps:
        await ps.node.wait_ready(60)
        stats_dir = Path(spec["stats_dir"]) if spec.get("stats_dir") else None
        if spec["role"] == "serve" and stats_dir is not None:
            _REPORTERS.add(asyncio.ensure_future(_write_stats(ps, stats_dir, spec["self"])))
        if spec["role"] == "load" and stats_dir is not None:
            spec = {**spec, "count_requests": lambda: _count_requests(ps, stats_dir, spec)}
        if spec["role"] == "serve":
            profile_to = os.environ.get("PEER_RING_BENCH_PROFILE_SERVE")
            if profile_to:  # the other nodes are killed, never stopped: dump every 2 s
                await _profile_serving(f"{profile_to}.{spec['self'].rsplit(':', 1)[1]}")
            while trace is not None:  # killed, never stopped: dump often
                await asyncio.sleep(0.5)
                trace.dump(Path(spec["trace"]) / f"trace.{spec['self'].rsplit(':', 1)[1]}.json")
            await asyncio.Event().wait()
        out: dict[str, Any] = {}
        for phase, rate in (("throughput", None), ("latency", spec["rate"])):
            topic = ps.topic(f"bench-{phase}", partitions=spec["partitions"])
            rec = Recorder()
            sub = topic.subscribe(group="g", max_in_flight=2048, start="latest")

            async with sub:
                traced = trace if phase == "latency" else None
                task = asyncio.ensure_future(_consume_pubsub(sub, rec, traced))
                await asyncio.sleep(0.5)  # the group is created at the log's end

                async def publish(data: bytes, t: Any = topic) -> None:
                    await t.publish(data)

                out[phase] = await _phase(publish, rec, spec, rate)
                out[phase]["sequencers"] = _placement(ps, topic, spec)
                task.cancel()
        if trace is not None:
            await asyncio.sleep(1.5)  # the other nodes dump what they saw last
            trace.dump(Path(spec["trace"]) / "trace.load.json")
        metrics = ps.metrics()
        metrics.pop("subscriptions")
        out["node0_metrics"] = metrics
        return out


_REPORTERS: set[asyncio.Task[None]] = set()  # referenced: asyncio keeps weak ones


def _requests_sent(ps: Any) -> int:
    stats = getattr(ps.node.transport, "stats", None)
    return int(stats()["requests_sent"]) if stats else 0


async def _write_stats(ps: Any, stats_dir: Path, address: str) -> None:
    """A serving node: its transport's request count, every 50 ms (it is killed, never
    stopped), for the load process to add up."""
    path = stats_dir / f"requests.{address.rsplit(':', 1)[1]}"
    while True:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(str(_requests_sent(ps)))
        tmp.replace(path)
        await asyncio.sleep(0.05)


def _count_requests(ps: Any, stats_dir: Path, spec: dict[str, Any]) -> int | None:
    """Requests written between the nodes so far: this node's own and the serving nodes'
    last reports (up to 50 ms old), or None when a node has not reported."""
    total = _requests_sent(ps)
    for address in spec["peers"]:
        if address == spec["self"]:
            continue
        try:
            total += int((stats_dir / f"requests.{address.rsplit(':', 1)[1]}").read_text())
        except (OSError, ValueError):
            return None
    return total


def _placement(ps: Any, topic: Any, spec: dict[str, Any]) -> list[int]:
    """How many of the topic's partitions each node sequences (node 0 runs the load)."""
    counts = [0] * len(spec["peers"])
    for p in range(spec["partitions"]):
        key = f"{topic.name}/{p}".encode()
        if hasattr(topic, "sequencer"):  # the balanced placement
            head = topic.sequencer(p)
        else:  # older code: the head of the preference list
            head = ps.node.preference_list(key, spec["replication"])[0]
        counts[spec["peers"].index(head)] += 1
    return counts


async def _profile_serving(path: str) -> None:
    import cProfile

    prof = cProfile.Profile(time.process_time)
    prof.enable()
    while True:
        await asyncio.sleep(2.0)
        prof.dump_stats(path)  # stops the profiler: start it again
        prof.enable()


async def _consume_pubsub(sub: Any, rec: Recorder, trace: Any = None) -> None:
    # ack_nowait: the ack joins the partition's next ack batch (one SETTLE per batch, like
    # the one XACK per XREADGROUP batch of the Redis consumer); failures show in health().
    async for msg in sub:
        _received(rec, msg.data)
        if trace is not None and rec.measuring:
            trace.mark("delivered", [msg.data])
        msg.ack_nowait()


async def redis_load(spec: dict[str, Any]) -> dict[str, Any]:
    import redis.asyncio as redis

    # A blocking pool: requests beyond the connection limit wait instead of failing.
    pool = redis.BlockingConnectionPool(
        host=spec["redis_host"], port=spec["redis_port"], max_connections=256, timeout=30
    )
    client = redis.Redis(connection_pool=pool)
    # The consumer has a connection of its own, as peer-ring's consumer has its own fetch
    # path: in the shared pool it queued behind thousands of paced publishes.
    reader = redis.Redis(host=spec["redis_host"], port=spec["redis_port"])
    out: dict[str, Any] = {}
    try:
        for phase, rate in (("throughput", None), ("latency", spec["rate"])):
            stream = f"bench-{phase}"
            await client.xgroup_create(stream, "g", id="$", mkstream=True)
            rec = Recorder()
            stop = asyncio.Event()

            async def consume(
                stream: str = stream, rec: Recorder = rec, stop: asyncio.Event = stop
            ) -> None:
                # A flag, not cancel(): redis-py may swallow a cancel in a blocking read.
                while not stop.is_set():
                    reply: Any = await reader.xreadgroup(
                        "g", "c1", {stream: ">"}, count=256, block=100
                    )
                    for _, entries in reply or []:
                        ids = []
                        for entry_id, fields in entries:
                            _received(rec, fields[b"d"])
                            ids.append(entry_id)
                        if ids:
                            await reader.xack(stream, "g", *ids)

            async def publish(data: bytes, stream: str = stream) -> None:
                await client.xadd(stream, {"d": data}, maxlen=100_000, approximate=True)

            task = asyncio.ensure_future(consume())
            out[phase] = await _phase(publish, rec, spec, rate)
            stop.set()
            await asyncio.wait_for(task, 10)
    finally:
        await client.aclose()
        await reader.aclose()
    return out


def worker(spec: dict[str, Any]) -> None:
    """Entry point of a child process: run the load, print one result line."""
    if spec["role"] == "load":  # a stuck run leaves its stacks in the log
        faulthandler.dump_traceback_later(20 + 3 * (spec["warmup"] + spec["duration"]), exit=True)
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    if os.environ.get("PEER_RING_BENCH_GC") == "off":  # diagnosis: no collector pauses
        import gc

        gc.disable()
    load = redis_load if spec["backend"] == "redis" else pubsub_load

    def run(main: Any) -> dict[str, Any]:
        if spec.get("gc_threshold") is None and not spec.get("gc_freeze"):
            plain: dict[str, Any] = asyncio.run(main)
            return plain
        # --gc-threshold / --gc-freeze: the core's opt-in host settings (peer_ring.core.run);
        # the freeze happens when a PeerRing starts, so it applies to the pub-sub nodes only.
        from peer_ring.core import run as run_node

        out: dict[str, Any] = run_node(
            main,
            gc_threshold=spec.get("gc_threshold"),
            gc_freeze_after_start=bool(spec.get("gc_freeze")),
        )
        return out

    profile_to = os.environ.get("PEER_RING_BENCH_PROFILE") if spec["role"] == "load" else None
    if profile_to:  # cProfile of the load process (node 0), for finding the hot spots
        import cProfile

        with cProfile.Profile(time.process_time) as prof:  # CPU time: the machine is shared
            result = run(load(spec))
        prof.dump_stats(f"{profile_to}.{spec['backend']}")
    else:
        result = run(load(spec))
    print(PREFIX + json.dumps(result), flush=True)


# ---------------------------------------------------------------- the parent
def _pubsub_src() -> str:
    # PEER_RING_BENCH_PUBSUB_SRC: another checkout's package sources (e.g. a git worktree
    # of an older commit), to measure old and new code with the same harness.
    return os.environ.get(
        "PEER_RING_BENCH_PUBSUB_SRC", str(REPO / "packages" / "peer-ring-pubsub" / "src")
    )


def _env() -> dict[str, str]:
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([_pubsub_src(), env["PYTHONPATH"]])
    return env


async def _spawn(spec: dict[str, Any], log: Path) -> asyncio.subprocess.Process:
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchlib.pubsub",
            "worker",
            json.dumps(spec),
            stdout=asyncio.subprocess.PIPE if spec["role"] == "load" else out,
            stderr=out,
            env=_env(),
            start_new_session=True,
        )


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


async def _collect(proc: asyncio.subprocess.Process, timeout: float, log: Path) -> dict[str, Any]:
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        raise RuntimeError(
            f"load did not finish in {timeout:g}s; log tail:\n{_tail(log)}"
        ) from None
    for line in out.decode(errors="replace").splitlines():
        if line.startswith(PREFIX):
            result: dict[str, Any] = json.loads(line[len(PREFIX) :])
            return result
    raise RuntimeError(f"load failed (exit {proc.returncode}); log tail:\n{_tail(log)}")


def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


async def run_pubsub(opts: argparse.Namespace, nodes: int, workdir: Path) -> dict[str, Any]:
    # PEER_RING_BENCH_PORT: a fixed first port, so runs compared share one ring placement
    # (which node sequences which partition moves the figures more than small changes do).
    fixed = os.environ.get("PEER_RING_BENCH_PORT")
    port = int(fixed) if fixed else free_port(["127.0.0.1"])
    ports = [port + i for i in range(nodes)]
    peers = [f"127.0.0.1:{p}" for p in ports]
    replication, quorum = (1, 1) if nodes == 1 else (3, 2)
    base = {**_base_spec(opts), "backend": "pubsub", "peers": peers}
    base.update(replication=replication, quorum=quorum)
    stats_dir = workdir / f"stats-n{nodes}"  # each serving node's request count
    stats_dir.mkdir()
    base["stats_dir"] = str(stats_dir)
    trace_dir = workdir / f"trace-n{nodes}"
    if opts.trace:
        trace_dir.mkdir()
        base["trace"] = str(trace_dir)
    procs = []
    try:
        for i, address in enumerate(peers[1:], start=1):
            log = workdir / f"pubsub-n{nodes}-node{i}.log"
            procs.append(await _spawn({**base, "self": address, "role": "serve"}, log))
        log = workdir / f"pubsub-n{nodes}-node0.log"
        pids = [p.pid for p in procs]
        load = await _spawn({**base, "self": peers[0], "role": "load", "peer_pids": pids}, log)
        procs.append(load)
        result = await _collect(load, 60 + 4 * (opts.duration + opts.warmup), log)
    finally:
        for proc in procs:
            _kill(proc)
            await proc.wait()
    system = f"peer-ring-pubsub N={replication} W={quorum} {opts.transport}"
    if opts.trace:
        from benchlib.pubsub_trace import Trace, breakdown

        trace = Trace()
        for path in sorted(trace_dir.glob("trace.*.json")):
            trace.merge_file(path)
        result["trace"] = breakdown(trace)
    return {"system": system, "nodes": nodes, **result}


async def run_redis(opts: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    server = RedisServer(workdir)
    await server.start()
    try:
        spec = {**_base_spec(opts), "backend": "redis", "role": "load"}
        spec["peer_pids"] = [server.proc.pid] if server.proc is not None else []
        spec.update(redis_host=server.host, redis_port=server.port)
        log = workdir / "redis-client.log"
        proc = await _spawn(spec, log)
        try:
            result = await _collect(proc, 30 + 4 * (opts.duration + opts.warmup), log)
        finally:
            _kill(proc)
            await proc.wait()
    finally:
        await server.stop()
    return {"system": f"Redis Streams {server.version}", "nodes": 1, **result}


def _base_spec(opts: argparse.Namespace) -> dict[str, Any]:
    return {
        "size": opts.size,
        "concurrency": opts.concurrency,
        "duration": opts.duration,
        "warmup": opts.warmup,
        "rate": opts.rate,
        "transport": opts.transport,
        "partitions": opts.partitions,
        "gc_threshold": opts.gc_threshold,
        "gc_freeze": opts.gc_freeze,
    }


def _table(results: list[dict[str, Any]]) -> str:
    lines = [
        f"{'system':<44} {'publish/s':>10} {'e2e/s':>10} {'err':>5} {'pub p50':>8} "
        f"{'pub p99':>8} {'cpu us':>7} {'all cpu':>7} {'req/1k':>7} | {'@rate e2e p50':>13} "
        f"{'p99 ms':>7} {'e2e/s':>8} {'req/1k':>7}"
    ]

    def per_k(phase: dict[str, Any]) -> str:
        value = phase.get("requests_per_1000_msgs")
        return f"{value:>7.0f}" if value is not None else f"{'-':>7}"

    for r in results:
        t, lat = r["throughput"], r["latency"]
        lines.append(
            f"{r['system']:<44} {t['publish_per_s']:>10.0f} {t['e2e_per_s']:>10.0f} "
            f"{t['errors'] + lat['errors']:>5} {t['publish_ms']['p50_ms']:>8.2f} "
            f"{t['publish_ms']['p99_ms']:>8.2f} {t['load_cpu_us_per_msg']:>7.0f} "
            f"{t['system_cpu_us_per_msg']:>7.0f} {per_k(t)} | "
            f"{lat['e2e_ms']['p50_ms']:>13.2f} "
            f"{lat['e2e_ms']['p99_ms']:>7.2f} {lat['e2e_per_s']:>8.0f} {per_k(lat)}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tools/bench pubsub", description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, nargs="+", default=[1, 3], help="cluster sizes (1, 3)")
    p.add_argument("--concurrency", type=int, default=64, help="publishers in flight")
    p.add_argument("--size", type=int, default=100, help="message bytes (>= 8)")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--rate", type=float, default=2000.0, help="offered msgs/s, latency phase")
    p.add_argument(
        "--transport", choices=("grpc", "tcp"), default="grpc", help="peer-ring's transport"
    )
    p.add_argument(
        "--partitions", type=int, default=TOPIC_PARTITIONS, help="peer-ring topic partitions"
    )
    p.add_argument("--no-redis", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--smoke", action="store_true", help="~10 s: it starts and reports")
    p.add_argument(
        "--gc-threshold",
        type=int,
        default=None,
        help="young-generation GC threshold in every load and node process "
        "(peer_ring.core.run(gc_threshold=)); default: Python's",
    )
    p.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.freeze() what exists once each pub-sub node started "
        "(peer_ring.core.run(gc_freeze_after_start=True))",
    )
    p.add_argument(
        "--gc-compare",
        action="store_true",
        help="run every system twice in this invocation: Python's collector defaults, then "
        "the host tuning (--gc-freeze and --gc-threshold, 20000 unless given), each "
        "ratio against Redis Streams run with the same settings",
    )
    p.add_argument(
        "--trace",
        action="store_true",
        help="time each stage of the latency phase's messages (benchlib/pubsub_trace.py); "
        "with --in-process: N nodes in this process at --rate for --duration",
    )
    p.add_argument(
        "--in-process",
        type=int,
        default=0,
        metavar="MESSAGES",
        help="instead: the nodes in this process, MESSAGES messages, CPU and requests per "
        "message counted (benchlib/pubsub_inproc.py)",
    )
    opts = p.parse_args(argv)
    if opts.smoke:
        opts.duration, opts.warmup, opts.nodes, opts.rate = 1.0, 0.3, [1], 200.0
    if opts.size < 8 or opts.concurrency < 1 or opts.duration <= 0 or opts.rate <= 0:
        p.error("--size >= 8, --concurrency >= 1, --duration > 0 and --rate > 0")
    if any(n not in (1, 3) for n in opts.nodes):
        p.error("--nodes takes 1 and/or 3")
    return opts


async def _in_process(opts: argparse.Namespace) -> int:
    sys.path.insert(0, _pubsub_src())
    from benchlib import pubsub_inproc

    if opts.trace:
        from benchlib import pubsub_trace

        for nodes in opts.nodes:
            trace = await pubsub_trace.run_in_process(
                nodes, opts.partitions, opts.rate, opts.duration, opts.transport, opts.size
            )
            print(f"in-process N={nodes}, {opts.rate:g} msgs/s, per stage:")
            print(pubsub_trace.table(trace))
        return 0

    results = [
        await pubsub_inproc.run(
            nodes, opts.partitions, opts.in_process, opts.concurrency, opts.size, opts.transport
        )
        for nodes in opts.nodes
    ]
    print(pubsub_inproc.table(results))
    path = (
        opts.json or REPO / "bench-results" / f"pubsub-inproc-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"options": vars(opts) | {"json": str(opts.json)}, "results": results}, indent=2)
    )
    print(f"results: {path}")
    return 0


async def _main(opts: argparse.Namespace) -> int:
    if opts.in_process:
        return await _in_process(opts)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-pubsub-") as tmp:
        workdir = Path(tmp)
        for i, (label, run_opts) in enumerate(_gc_variants(opts)):
            part: list[dict[str, Any]] = []
            vdir = workdir / f"variant-{i}"  # each variant's runs write their own files
            vdir.mkdir()
            if not opts.no_redis:
                if redis_server_binary() is None:
                    print("redis-server not found: Redis baseline skipped", file=sys.stderr)
                else:
                    part.append(await run_redis(run_opts, vdir))
            for nodes in opts.nodes:
                part.append(await run_pubsub(run_opts, nodes, vdir))
            for r in part:
                r["system"] += label
                r["gc"] = {"threshold": run_opts.gc_threshold, "freeze": run_opts.gc_freeze}
            results.extend(part)
    print(_table(results))
    for r in results:
        placed = r["throughput"].get("sequencers")
        if placed and len(placed) > 1:
            print(f"{r['system']}: partitions sequenced per node (node 0 runs the load): {placed}")
    if opts.trace:
        from benchlib.pubsub_trace import table

        for r in results:
            if "trace" in r:
                print(f"{r['system']}, latency phase at {opts.rate:g} msgs/s, per stage:")
                print(table(r["trace"]))
    for redis in (r for r in results if r["system"].startswith("Redis")):
        for r in results:
            if r is not redis and not r["system"].startswith("Redis") and r["gc"] == redis["gc"]:
                base = redis["throughput"]
                ratio = r["throughput"]["e2e_per_s"] / max(base["e2e_per_s"], 1)
                pub = r["throughput"]["publish_per_s"] / max(base["publish_per_s"], 1)
                print(f"{r['system']}: publish {pub:.2f}x, end-to-end {ratio:.2f}x Redis Streams")
    doc = {"options": vars(opts) | {"json": str(opts.json)}, "results": results}
    path = opts.json or REPO / "bench-results" / f"pubsub-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))
    print(f"results: {path}")
    if any(r["throughput"]["publish_per_s"] == 0 for r in results):
        return 1
    return 0


def _gc_variants(opts: argparse.Namespace) -> list[tuple[str, argparse.Namespace]]:
    """The collector settings to run every system with: the given ones, or with
    --gc-compare Python's defaults and then the host tuning (the given --gc-threshold,
    else 20,000, and --gc-freeze), labelled, the same for Redis's client and peer-ring."""
    if not opts.gc_compare:
        return [("", opts)]
    plain = argparse.Namespace(**{**vars(opts), "gc_threshold": None, "gc_freeze": False})
    tuned = argparse.Namespace(
        **{**vars(opts), "gc_threshold": opts.gc_threshold or 20_000, "gc_freeze": True}
    )
    return [(" gc-default", plain), (" gc-tuned", tuned)]


def main(argv: list[str]) -> int:
    """``tools/bench pubsub [options]``."""
    return asyncio.run(_main(parse_args(argv)))


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        worker(json.loads(sys.argv[2]))
    else:
        sys.exit(main(sys.argv[1:]))
