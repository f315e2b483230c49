"""A real Redis server for tests: ``redis-server`` from ``PATH``, or the ``redis`` image."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from peer_ring.core.testing import free_port
from testing_components._docker import ContainerNotReadyError, run_container

#: The official image; tools/docker-test-env builds a stand-in of the same name from Debian's
#: redis-server (7.0) when no registry is reachable.
REDIS_IMAGE = "redis:7.0-bookworm"
INSTALL_HINT = "install it with `apt-get install redis-server` (.ci/run does)"
_HOST = "127.0.0.1"


@dataclass(frozen=True)
class RedisEndpoint:
    """A running Redis server.

    Attributes:
        host: Its loopback address.
        port: Its port.
        via: ``"binary"`` (a local ``redis-server`` process) or ``"container"``.
        version: What ``INFO server`` reports as ``redis_version``.
    """

    host: str
    port: int
    via: Literal["binary", "container"]
    version: str

    @property
    def url(self) -> str:
        """``redis://host:port/0``, for redis-py's ``Redis.from_url``."""
        return f"redis://{self.host}:{self.port}/0"


def redis_binary() -> str | None:
    """Path of ``redis-server`` on ``PATH``, or ``None``."""
    return shutil.which("redis-server")


def server_args(port: int) -> list[str]:
    """Arguments of a private, throw-away server: loopback only, no persistence."""
    return [
        "--bind",
        _HOST,
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
    ]


def _command(port: int, *args: bytes, timeout: float = 1.0) -> bytes:
    """Send one RESP command on a fresh connection; the first reply line (small replies)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    with socket.create_connection((_HOST, port), timeout=timeout) as sock:
        sock.sendall(b"".join(parts))
        reply = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return reply
            reply += chunk
            if reply.startswith((b"+", b"-", b":")) and reply.endswith(b"\r\n"):
                return reply
            if reply.startswith(b"$"):
                size = int(reply[1 : reply.index(b"\r\n")])
                if len(reply) >= reply.index(b"\r\n") + 2 + size + 2:
                    return reply


def _answers(port: int) -> bool:
    try:
        return _command(port, b"PING").startswith(b"+PONG")
    except OSError:
        return False


def _version(port: int) -> str:
    info = _command(port, b"INFO", b"server").decode(errors="replace")
    for line in info.splitlines():
        if line.startswith("redis_version:"):
            return line.split(":", 1)[1].strip()
    return "?"


@contextmanager
def redis_via_binary(deadline: float = 20.0) -> Iterator[RedisEndpoint]:
    """Run ``redis-server`` from ``PATH`` on a free loopback port until the block ends.

    Raises:
        RuntimeError: ``redis-server`` is not on ``PATH``.
        ContainerNotReadyError: it exited or did not answer ``PING`` within ``deadline``
            (the same error as the container path, with the log's last lines).
    """
    binary = redis_binary()
    if binary is None:
        raise RuntimeError(f"redis-server is not on PATH: {INSTALL_HINT}")
    port = free_port(_HOST)
    with tempfile.TemporaryDirectory(prefix="peer-ring-redis-") as workdir:
        log = Path(workdir) / "redis-server.log"
        # Its own log file, and its output beside it (errors before the log file is open).
        with (Path(workdir) / "output.log").open("wb") as output:
            proc = subprocess.Popen(
                [binary, *server_args(port), "--dir", workdir, "--logfile", str(log)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            limit = time.monotonic() + deadline
            while not _answers(port):
                if proc.poll() is not None or time.monotonic() >= limit:
                    what = (
                        f"exited with status {proc.returncode}"
                        if proc.returncode is not None
                        else f"not ready within {deadline:g}s"
                    )
                    tail = "".join(
                        f.read_text(errors="replace")
                        for f in (Path(workdir) / "output.log", log)
                        if f.exists()
                    )
                    raise ContainerNotReadyError(
                        f"redis-server on port {port} {what}; last log lines:\n"
                        + ("\n".join(tail.splitlines()[-30:]) or "(empty log)")
                    )
                time.sleep(0.05)
            yield RedisEndpoint(_HOST, port, "binary", _version(port))
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@contextmanager
def redis_via_container(
    image: str = REDIS_IMAGE, deadline: float = 30.0
) -> Iterator[RedisEndpoint]:
    """Run ``image`` (testcontainers, host networking) on a free loopback port.

    The container is removed when the block ends, also on failure.

    Raises:
        ContainerNotReadyError: it exited or did not answer ``PING`` within ``deadline``.
        RuntimeError: the image is missing and cannot be pulled.
    """
    port = free_port(_HOST)
    with run_container(
        image,
        ["redis-server", *server_args(port)],
        ready=lambda: _answers(port),
        deadline=deadline,
        name="redis",
    ):
        yield RedisEndpoint(_HOST, port, "container", _version(port))
