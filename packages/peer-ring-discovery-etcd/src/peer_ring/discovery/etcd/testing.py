"""Test support: run a real single-member etcd on loopback, stop it, crash it, restart it.

Used by this package's tests and by the e2e suite; handy for applications' own tests::

    server = EtcdServer(etcd_binary(), tmp_path / "etcd")
    server.start()            # free ports on 127.0.0.1, waits until /health answers
    ... EtcdDiscovery(self_address="127.0.0.1:7101", endpoints=server.endpoint) ...
    server.stop()             # SIGTERM (server.stop(signal.SIGKILL) to crash it)
    server.start()            # again: same ports, same data

The binary comes from ``$PEER_RING_K8S_BIN`` or ``~/.cache/peer-ring/bin`` (where the
repository's ``tools/k8s-test-env`` builds etcd), else from ``PATH``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from peer_ring.core.testing import free_port

__all__ = ["INSTALL_HINT", "EtcdServer", "etcd_binary"]

#: How to get an etcd binary, for skip messages.
INSTALL_HINT = (
    "no etcd in $PEER_RING_K8S_BIN, ~/.cache/peer-ring/bin or on PATH; build it with "
    "tools/k8s-test-env (or install an etcd release binary)"
)


def etcd_binary() -> str | None:
    """The etcd binary to test with, or None when there is none."""
    bin_dir = Path(os.environ.get("PEER_RING_K8S_BIN", Path.home() / ".cache/peer-ring/bin"))
    built = bin_dir / "etcd"
    if built.exists():
        return str(built)
    return shutil.which("etcd")


class EtcdServer:
    """One etcd process on loopback, restartable on the same ports and data.

    Args:
        binary: the etcd executable.
        workdir: its data and log folder (created; kept across restarts).
        wait: seconds to wait for etcd to become healthy.
    """

    def __init__(self, binary: str, workdir: str | os.PathLike[str], *, wait: float = 60.0) -> None:
        self.binary = binary
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.wait = wait
        self.port = free_port()
        self.peer_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        #: ``host:port`` for ``EtcdDiscovery(endpoints=...)``.
        self.endpoint = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log(self) -> Path:
        """etcd's log file."""
        return self.workdir / "etcd.log"

    def start(self) -> None:
        """Start etcd (again) and wait until it is healthy.

        Raises:
            RuntimeError: etcd exited, or was not healthy in time (with its log's end).
        """
        args = [
            self.binary,
            "--name=test",
            f"--data-dir={self.workdir / 'data'}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls=http://127.0.0.1:{self.peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{self.peer_port}",
            f"--initial-cluster=test=http://127.0.0.1:{self.peer_port}",
            "--log-level=warn",
            "--unsafe-no-fsync",  # throw-away data: skip fsync on a shared disk
        ]
        with self.log.open("ab") as out:  # the child keeps its own copy of the descriptor
            out.write(f"\n---- start #{self.starts + 1} ----\n".encode())
            out.flush()
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        self.starts += 1
        deadline = time.monotonic() + self.wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"etcd exited with {self.proc.returncode}:\n{tail}")
            if self.healthy():
                return
            time.sleep(0.1)
        raise RuntimeError(f"etcd not healthy after {self.wait:g} s")

    def healthy(self) -> bool:
        """Whether etcd's ``/health`` says so."""
        with (
            contextlib.suppress(OSError, urllib.error.URLError, ValueError),
            urllib.request.urlopen(f"{self.url}/health", timeout=2) as r,
        ):
            return bool(json.load(r).get("health") == "true")
        return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop etcd with ``sig`` (SIGTERM: graceful, which takes seconds while watches are
        open; SIGKILL: a crash) and wait for it to exit."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def close(self) -> None:
        """Kill etcd (the data folder stays)."""
        self.stop(signal.SIGKILL)
