"""The parent side: worker processes, the Redis server, profilers and cleanup.

Every child runs in its own session (process group) and is killed by group in a
``finally`` -- a benchmark that leaks a node keeps its port and skews the next run. Every
wait is bounded by a timeout; a worker that dies or stalls fails the run with the tail of
its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib._worker import PREFIX

TOOLS = Path(__file__).resolve().parent.parent
REPO = TOOLS.parent
#: Source folders of the packages, so the benchmark runs from a checkout without installs.
SRC_DIRS = [
    REPO / "packages" / name / "src"
    for name in ("peer-ring-core", "peer-ring-discovery-static", "peer-ring-kv-store")
]

INSTALL_REDIS_HINT = (
    "redis-server is not installed: install it with `apt-get install -y redis-server` "
    "(Debian/Ubuntu; .ci/run does it), or run with --no-redis"
)


class WorkerFailedError(RuntimeError):
    """A child exited or stalled; the message ends with its log tail."""


class StartFailedError(WorkerFailedError):
    """A child failed before the measurement began (e.g. its port was taken meanwhile on
    this shared machine); the caller may retry the run with fresh ports."""


def child_env() -> dict[str, str]:
    """The environment of every child: tools/ and the package sources on PYTHONPATH."""
    env = dict(os.environ)
    paths = [str(TOOLS), *(str(p) for p in SRC_DIRS)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def free_port(hosts: Sequence[str]) -> int:
    """A TCP port that is free on every one of ``hosts`` (bounded attempts)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = int(probe.getsockname()[1])
        try:
            for host in hosts[1:]:
                with socket.socket() as other:
                    other.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no common free port on {list(hosts)}")


def node_addresses(count: int, single_ip: bool) -> list[str]:
    """Peer addresses: ``127.0.0.1..N`` with one port, or ``127.0.0.1`` with N ports."""
    if single_ip:
        ports: list[int] = []
        while len(ports) < count:
            port = free_port(["127.0.0.1"])
            if port not in ports:
                ports.append(port)
        return [f"127.0.0.1:{port}" for port in ports]
    hosts = [f"127.0.0.{i + 1}" for i in range(count)]
    port = free_port(hosts)
    return [f"{host}:{port}" for host in hosts]


#: Runs ``argv[1:]`` after asking the kernel to SIGKILL it when the parent dies
#: (PR_SET_PDEATHSIG survives exec), so a SIGKILLed ``tools/bench`` leaks no redis-server.
_DIE_WITH_PARENT = (
    "import ctypes, os, sys; ctypes.CDLL(None).prctl(1, 9); os.execvp(sys.argv[1], sys.argv[1:])"
)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


def _kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class Worker:
    """One child process speaking the :mod:`benchlib._worker` line protocol."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.name = name
        self.proc = proc
        self.log = log

    @classmethod
    async def spawn(cls, name: str, spec: dict[str, Any], log: Path) -> Worker:
        """Start ``python -m benchlib._worker <spec>`` in a new session."""
        with log.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "benchlib._worker",
                json.dumps(spec),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                env=child_env(),
                start_new_session=True,
                limit=1 << 24,  # result lines carry histograms
            )
        return cls(name, proc, log)

    @property
    def pid(self) -> int:
        """The child's pid (also its process group id)."""
        return int(self.proc.pid)

    def send(self, cmd: str, **fields: Any) -> None:
        """Write one command line to the child's stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"cmd": cmd, **fields}) + "\n").encode())

    async def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """The next protocol event, which must be ``event``; bounded by ``timeout``."""
        try:
            return await asyncio.wait_for(self._next(event), timeout)
        except TimeoutError:
            raise WorkerFailedError(
                f"{self.name} sent no {event!r} within {timeout:g}s; log tail:\n{_tail(self.log)}"
            ) from None

    async def _next(self, event: str) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                await self.proc.wait()
                raise WorkerFailedError(
                    f"{self.name} exited with {self.proc.returncode} while the parent waited "
                    f"for {event!r}; log tail:\n{_tail(self.log)}"
                )
            text = line.decode(errors="replace").rstrip("\n")
            if not text.startswith(PREFIX):
                continue  # stray output, not ours
            message: dict[str, Any] = json.loads(text[len(PREFIX) :])
            if message.get("event") == "error":
                raise WorkerFailedError(f"{self.name} failed:\n{message.get('message')}")
            if message.get("event") != event:
                raise WorkerFailedError(f"{self.name}: expected {event!r}, got {message!r}")
            return message

    async def stop(self, timeout: float = 15.0) -> None:
        """Ask the child to stop; kill its group if it does not exit in time."""
        with contextlib.suppress(Exception):
            self.send("stop")
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.kill()
            await self.proc.wait()

    def kill(self) -> None:
        """SIGKILL the child's whole process group (no-op once it exited and was reaped)."""
        if self.proc.returncode is None:
            _kill_group(self.pid)


# -- /proc sampling ----------------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all threads), from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def proc_peak_rss(pid: int) -> int:
    """Peak resident set size (VmHWM) of ``pid`` in bytes; 0 if unknown."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def system_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    total = sum(values[:8])  # guest time is already inside user/nice
    idle = values[3] + values[4]  # idle + iowait
    return (total - idle) / ticks, total / ticks


#: Machine-wide TCP counters sampled over each window (loopback retransmissions and
#: tail-loss probes: one such stall delays every operation multiplexed on that connection).
TCP_COUNTERS = ("RetransSegs", "TCPLossProbes", "TCPTimeouts", "TCPSpuriousRTOs")


def tcp_counters() -> dict[str, int]:
    """The :data:`TCP_COUNTERS` from /proc/net/snmp and /proc/net/netstat (0 if absent)."""
    out = dict.fromkeys(TCP_COUNTERS, 0)
    for path in ("/proc/net/snmp", "/proc/net/netstat"):
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            continue
        for names, values in zip(lines[::2], lines[1::2], strict=False):
            for name, value in zip(names.split()[1:], values.split()[1:], strict=False):
                if name in out:
                    out[name] = int(value)
    return out


# -- Redis server ------------------------------------------------------------------------


def redis_server_binary() -> str | None:
    """Path of ``redis-server``, or ``None``."""
    return shutil.which("redis-server")


@dataclass
class RedisServer:
    """A private ``redis-server`` on a free loopback port, no persistence."""

    workdir: Path
    host: str = "127.0.0.1"
    port: int = 0
    proc: asyncio.subprocess.Process | None = None
    version: str = ""

    async def start(self) -> None:
        """Start it and wait (bounded) until it answers PING."""
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError(INSTALL_REDIS_HINT)
        self.port = free_port([self.host])
        log = self.workdir / "redis-server.log"
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _DIE_WITH_PARENT,
            binary,
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--dir",
            str(self.workdir),
            "--logfile",
            str(log),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                reply = await self.command(b"PING")
                if reply.startswith(b"+PONG"):
                    break
            except OSError:
                pass
            if self.proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start; log tail:\n{_tail(log)}")
            await asyncio.sleep(0.05)
        info = await self.command(b"INFO", b"server")
        for line in info.decode(errors="replace").splitlines():
            if line.startswith("redis_version:"):
                self.version = line.split(":", 1)[1].strip()

    async def command(self, *args: bytes) -> bytes:
        """Send one RESP command on a fresh connection; the raw reply (small replies only)."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 5)
        try:
            parts = [b"*%d\r\n" % len(args)]
            for arg in args:
                parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
            writer.write(b"".join(parts))
            await writer.drain()
            first = await asyncio.wait_for(reader.readline(), 5)
            if first.startswith(b"$"):
                size = int(first[1:])
                body = await asyncio.wait_for(reader.readexactly(size + 2), 5)
                return body[:-2]
            return first
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @property
    def pid(self) -> int:
        """The server's pid."""
        assert self.proc is not None
        return int(self.proc.pid)

    async def stop(self) -> None:
        """Kill the server's process group and reap it."""
        if self.proc is not None and self.proc.returncode is None:
            _kill_group(self.proc.pid)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.proc.wait(), 10)


# -- one measured run ----------------------------------------------------------------------


@dataclass
class RunPlan:
    """One measured configuration of one system."""

    system: str  # "peer-ring" or "redis"
    processes: int
    workload: dict[str, Any]
    warmup: float
    duration: float
    replication: int = 1
    quorum: int = 1
    single_ip: bool = False
    uvloop: bool = True
    request_timeout: float = 2.0
    profile: str | None = None  # "cprofile" | "py-spy" (process 0 only)
    extra: dict[str, Any] = field(default_factory=dict)


async def run_plan(plan: RunPlan, workdir: Path, redis: RedisServer | None) -> dict[str, Any]:
    """Start the processes, prefill, run the shared schedule, collect, stop. Raw results."""
    tag = f"{plan.system}-c{plan.workload['concurrency']}-r{plan.replication}q{plan.quorum}"
    run_dir = workdir / f"{tag}-{time.strftime('%H%M%S')}-{os.getpid()}-{time.monotonic_ns()}"
    run_dir.mkdir(parents=True)
    base: dict[str, Any] = {
        "role": "node" if plan.system == "peer-ring" else "redis",
        "processes": plan.processes,
        "workload": plan.workload,
        "warmup": plan.warmup,
        "duration": plan.duration,
        "uvloop": plan.uvloop,
        "gc_threshold": int(plan.extra.get("gc_threshold", 0)),
        "gc_freeze": bool(plan.extra.get("gc_freeze", False)),
    }
    addresses: list[str] = []
    if plan.system == "peer-ring":
        addresses = node_addresses(plan.processes, plan.single_ip)
        base.update(
            peers=addresses,
            replication=plan.replication,
            quorum=plan.quorum,
            request_timeout=plan.request_timeout,
            transport=plan.extra.get("transport", "grpc"),
            read_fanout=plan.extra.get("read_fanout", "quorum"),
            node_config=dict(plan.extra.get("node_config", {})),
        )
    else:
        assert redis is not None
        base.update(redis_host=redis.host, redis_port=redis.port)
    cprofile_path = run_dir / "node0.prof"
    workers: list[Worker] = []
    spy: asyncio.subprocess.Process | None = None
    try:
        for index in range(plan.processes):
            spec = dict(base, index=index)
            if plan.system == "peer-ring":
                spec["address"] = addresses[index]
            if plan.profile == "cprofile" and index == 0:
                spec["profile_path"] = str(cprofile_path)
            name = f"{base['role']}{index}"
            if plan.extra.get("trace"):
                spec["trace_path"] = str(run_dir / f"{name}.trace.json")
            workers.append(await Worker.spawn(name, spec, run_dir / f"{name}.log"))
        try:
            await asyncio.gather(*(w.expect("started", 90) for w in workers))
            if redis is not None:
                await redis.command(b"FLUSHALL")
            for w in workers:
                w.send("prefill")
            prefills = await asyncio.gather(*(w.expect("prefilled", 180) for w in workers))
        except WorkerFailedError as exc:
            raise StartFailedError(str(exc)) from None
        start_at = time.time() + 0.5
        for w in workers:
            w.send("run", start_at=start_at)
        window_start = start_at + plan.warmup
        window_end = window_start + plan.duration
        samples = asyncio.ensure_future(
            # The server's CPU belongs to the Redis runs only (it idles during peer-ring's).
            _sample_window(
                window_start, window_end, redis.pid if redis and plan.system == "redis" else None
            )
        )
        if plan.profile == "py-spy":
            spy = await _start_py_spy(workers[0].pid, window_start, plan.duration, run_dir)
        results = await asyncio.gather(
            *(w.expect("result", plan.warmup + plan.duration + 90) for w in workers)
        )
        window = await samples
        if spy is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(spy.wait(), 30)
        for w in workers:
            w.send("stop")
        await asyncio.gather(*(w.stop() for w in workers))
    finally:
        for w in workers:
            w.kill()
        if spy is not None and spy.returncode is None:
            _kill_group(spy.pid)
            await spy.wait()
    profile_files: dict[str, str] = {}
    if plan.profile == "cprofile" and cprofile_path.exists():
        profile_files["cprofile"] = str(cprofile_path)
    if plan.profile == "py-spy" and (run_dir / "node0.pyspy.txt").exists():
        profile_files["py-spy"] = str(run_dir / "node0.pyspy.txt")
    return {
        "plan": plan,
        "addresses": addresses,
        "prefill_s": max(p["seconds"] for p in prefills),
        "processes": results,
        "window": window,
        "profile_files": profile_files,
        "traces": [
            str(run_dir / f"{base['role']}{i}.trace.json")
            for i in range(plan.processes)
            if plan.extra.get("trace")
        ],
        "logs": str(run_dir),
    }


async def _sleep_until(wall: float) -> None:
    delay = wall - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


async def _sample_window(start: float, end: float, server_pid: int | None) -> dict[str, Any]:
    """Machine-wide CPU and the Redis server's CPU over the measurement window."""
    await _sleep_until(start)
    busy0, total0 = system_cpu()
    tcp0 = tcp_counters()
    server0 = proc_cpu_seconds(server_pid) if server_pid else 0.0
    await _sleep_until(end)
    busy1, total1 = system_cpu()
    tcp1 = tcp_counters()
    server1 = proc_cpu_seconds(server_pid) if server_pid else 0.0
    out: dict[str, Any] = {
        "machine_busy_cpu_s": busy1 - busy0,
        "machine_total_cpu_s": total1 - total0,
        "loadavg_1m": os.getloadavg()[0],
        "tcp": {name: tcp1[name] - tcp0[name] for name in TCP_COUNTERS},
    }
    if server_pid:
        out["server_cpu_s"] = server1 - server0
        out["server_peak_rss_bytes"] = float(proc_peak_rss(server_pid))
    return out


async def _start_py_spy(
    pid: int, window_start: float, duration: float, run_dir: Path
) -> asyncio.subprocess.Process | None:
    """Sample process ``pid`` with py-spy over the window (collapsed stacks)."""
    binary = shutil.which("py-spy")
    if binary is None:
        print("py-spy not found (pip install py-spy): no profile", file=sys.stderr)
        return None
    await _sleep_until(window_start)
    with (run_dir / "py-spy.log").open("wb") as log:
        return await asyncio.create_subprocess_exec(
            binary,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, int(duration))),
            # Blocking mode (py-spy pauses the process per sample): --nonblocking gave torn
            # stacks here. 100 Hz keeps the pauses' cost small.
            "--rate",
            "100",
            "--threads",
            "--format",
            "raw",
            "--output",
            str(run_dir / "node0.pyspy.txt"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
