"""``peer-ring-kv demo`` run as a user runs it: a subprocess that must exit 0."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys

import pytest

from peer_ring.kv._demo import DemoOptions, Step, _Report, demo_keys

pytestmark = pytest.mark.slow

# The node processes must be configured by their flags alone, never by PEER_RING_* variables
# that happen to be set where the tests run.
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PEER_RING_")}

# The demo promises to finish in under a minute; leave room for a loaded CI machine.
DEMO_DEADLINE = 90.0


async def test_demo_exits_0_and_every_key_is_readable() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "peer_ring.kv.cli",
        "demo",
        "--keys",
        "60",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=CLEAN_ENV,
    )
    try:
        out_bytes, _ = await asyncio.wait_for(process.communicate(), DEMO_DEADLINE)
    except TimeoutError:
        process.kill()  # its atexit hook cannot run on SIGKILL: the nodes are its children
        await process.wait()
        raise
    out = out_bytes.decode(errors="replace")
    assert process.returncode == 0, out
    assert "OK: every key readable (60/60)" in out
    # Every step of the scenario appears in the table, none failed, nothing lost.
    for step in (
        "start 3 nodes",
        "write 60 keys (N=3, W=2)",
        "kill -9 node 3",
        "read 60 keys via the survivors (R=2)",
        "restart node 3",
        "read 60 keys via node 3 (R=2)",
    ):
        assert step in out, step
    assert "FAILED" not in out
    reads = re.findall(r"read 60 keys via .*?\s+\d+\.\d+s\s+(\d+)\s+(\d+)\s+(\d+)", out)
    assert reads == [("60", "0", "0"), ("60", "0", "0")], out


def test_demo_keys_are_distinct() -> None:
    data = demo_keys(100)
    assert len(data) == 100
    assert len(set(data.values())) == 100


def test_report_table_shows_counts_and_failures() -> None:
    import io

    report = _Report(io.StringIO())
    report.steps = [
        Step("write", 0.5, ok=10, failed=0),
        Step("read", 0.25, ok=8, lost=2, failed=0),
        Step("restart", 1.0, error="NodeFailedError: boom"),
    ]
    lines = report.table().splitlines()
    assert lines[0].split() == ["step", "time", "ok", "lost", "failed"]
    assert lines[2].split() == ["write", "0.50s", "10", "-", "0"]
    assert lines[3].split() == ["read", "0.25s", "8", "2", "0"]
    assert lines[4].split() == ["restart", "FAILED", "-", "-", "-"]
    assert not report.steps[1].passed
    assert not report.steps[2].passed
    assert report.steps[0].passed


def test_options_defaults() -> None:
    options = DemoOptions.from_args(3, 100, None, "127.0.0.1")
    assert options == DemoOptions()


# Ctrl-C must reach the demo as it reaches a program started from a terminal, with SIGINT at
# its default disposition. A shell without job control starts background commands with SIGINT
# ignored, and the ignore survives exec: this prefix of the command resets it in the child,
# then execs the rest of the command line (same pid, so the test's SIGINT reaches the demo).
# Not with preexec_fn: that makes subprocess fork() instead of vfork() and run this process's
# fork handlers. In an xdist worker that ran gRPC tests before, gRPC then restarts its poller
# thread in the child, which crashes once the child closes its descriptors before exec
# ("Epoll1Poller encountered epoll_wait error: Bad file descriptor"): the demo never started.
DEFAULT_SIGINT_THEN_EXEC = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])",
]


def test_the_command_prefix_undoes_an_ignored_sigint() -> None:
    # Start the prefix with SIGINT ignored (as a background job is), without preexec_fn.
    ignore_then_exec = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
        "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
    )
    show = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    for prefix, expected in (([], "False"), (DEFAULT_SIGINT_THEN_EXEC[1:], "True")):
        result = subprocess.run(
            [sys.executable, "-c", ignore_then_exec, *prefix, "-c", show],
            capture_output=True,
            text=True,
            timeout=DEMO_DEADLINE,
            check=True,
        )
        assert result.stdout.strip() == expected, (prefix, result)


async def test_ctrl_c_stops_every_node() -> None:
    process = await asyncio.create_subprocess_exec(
        *DEFAULT_SIGINT_THEN_EXEC,
        "-m",
        "peer_ring.kv.cli",
        "demo",
        "--keys",
        "10",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=CLEAN_ENV,
    )
    assert process.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(DEMO_DEADLINE):
            # Wait until the nodes run: then an interrupt has processes to clean up.
            while not any("start 3 nodes: done" in line for line in lines):
                raw = await process.stdout.readline()
                assert raw, "".join(lines)
                lines.append(raw.decode(errors="replace"))
            process.send_signal(signal.SIGINT)
            rest, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    out = "".join(lines) + rest.decode(errors="replace")
    assert process.returncode == 130, out
    assert "interrupted: the cluster was stopped" in out
    # No node outlived the demo: every peer and HTTP port it used can be bound again.
    ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", out)]
    assert len(ports) >= 6, out
    for port in set(ports):
        with socket.socket() as sock:
            # SO_REUSEADDR tolerates closed connections in TIME_WAIT, never a live listener.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen()
