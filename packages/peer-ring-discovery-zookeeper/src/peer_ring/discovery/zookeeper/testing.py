"""Test support: run a real standalone ZooKeeper server on loopback, expire a session.

Used by this package's tests and by the e2e suite; handy for applications' own tests::

    server = ZooKeeperServer(tmp_path / "zk")
    server.start()            # a free port on 127.0.0.1, waits until it answers
    ... ZooKeeperDiscovery(server.hosts, "127.0.0.1:7101") ...
    server.stop()             # SIGTERM (server.kill() for SIGKILL); start() again to restart

The server runs from an installed ZooKeeper: Debian's ``zookeeper`` package
(``/usr/share/java/zookeeper.jar``, whose manifest names its dependencies), or the jars
of a release tarball under ``$ZOOKEEPER_HOME/lib``, with ``java`` on ``PATH``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from peer_ring.core.testing import free_port
from peer_ring.discovery.zookeeper._kazoo import close_session

__all__ = ["ZooKeeperServer", "close_session", "zookeeper_classpath"]

#: Debian's jar (its manifest ``Class-Path`` lists the dependency jars).
DEBIAN_JAR = Path("/usr/share/java/zookeeper.jar")
#: How to install what :class:`ZooKeeperServer` needs, for skip messages.
INSTALL_HINT = "apt-get install zookeeper (Debian; brings a JRE), or set ZOOKEEPER_HOME"


def zookeeper_classpath() -> str | None:
    """The classpath of an installed ZooKeeper server, or None when none is found."""
    home = os.environ.get("ZOOKEEPER_HOME")
    if home:
        jars = sorted(str(p) for p in Path(home, "lib").glob("*.jar"))
        jars += sorted(str(p) for p in Path(home).glob("zookeeper-*.jar"))
        if jars:
            return os.pathsep.join(jars)
    if DEBIAN_JAR.is_file():
        return str(DEBIAN_JAR)
    return None


def zookeeper_available() -> bool:
    """True when ``java`` and a ZooKeeper server classpath are installed."""
    return shutil.which("java") is not None and zookeeper_classpath() is not None


class ZooKeeperServer:
    """One standalone ZooKeeper server process on loopback, for tests.

    Args:
        data_dir: its data folder (created); kept across :meth:`stop`/:meth:`start`, so
            sessions and znodes survive a restart as they do in production.
        port: client port (default: a free one, kept for restarts).
        host: address to listen on.
        tick_ms: ZooKeeper's ``tickTime``; session timeouts are clamped to
            ``min_session_timeout``..``max_session_timeout`` (ms).
        min_session_timeout: smallest session timeout granted (ms).
        max_session_timeout: largest session timeout granted (ms).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        tick_ms: int = 100,
        min_session_timeout: int = 200,
        max_session_timeout: int = 60_000,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port or free_port(host)
        self.tick_ms = tick_ms
        self.min_session_timeout = min_session_timeout
        self.max_session_timeout = max_session_timeout
        self.log_path = self.data_dir / "server.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def hosts(self) -> str:
        """``host:port`` for clients."""
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """True while the server process lives."""
        return self._process is not None and self._process.poll() is None

    def _write_config(self) -> Path:
        data = self.data_dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "zoo.cfg"
        config.write_text(
            "\n".join(
                [
                    f"tickTime={self.tick_ms}",
                    f"dataDir={data}",
                    f"clientPort={self.port}",
                    f"clientPortAddress={self.host}",
                    f"minSessionTimeout={self.min_session_timeout}",
                    f"maxSessionTimeout={self.max_session_timeout}",
                    "admin.enableServer=false",
                    "4lw.commands.whitelist=ruok,srvr,stat,mntr,cons",
                    # Tests fsync nothing they need to keep: do not wait on the disk.
                    "forceSync=no",
                    "",
                ]
            )
        )
        return config

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until it answers ``ruok``.

        Raises:
            RuntimeError: no ZooKeeper installed, or the server did not come up in time
                (the message ends with its log).
        """
        if self.running:
            return
        classpath = zookeeper_classpath()
        java = shutil.which("java")
        if classpath is None or java is None:
            raise RuntimeError(f"no ZooKeeper server found: {INSTALL_HINT}")
        config = self._write_config()
        log = self.log_path.open("ab")
        try:
            self._process = subprocess.Popen(
                [
                    java,
                    "-Xmx256m",
                    "-XX:+UseSerialGC",
                    "-XX:TieredStopAtLevel=1",  # starts faster; tests need no peak speed
                    "-Dzookeeper.admin.enableServer=false",
                    "-cp",
                    classpath,
                    "org.apache.zookeeper.server.ZooKeeperServerMain",
                    str(config),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C of the test run is not its signal
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            if self.four_letter("ruok") == "imok":
                return
            time.sleep(0.05)
        self.kill()
        tail = self.log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"ZooKeeper did not start on {self.hosts}; log:\n{tail}")

    def four_letter(self, command: str, timeout: float = 1.0) -> str | None:
        """The answer to a four-letter command (``ruok``, ``srvr``...), None if unreachable."""
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
                sock.sendall(command.encode())
                chunks = []
                while chunk := sock.recv(4096):
                    chunks.append(chunk)
                return b"".join(chunks).decode(errors="replace")
        except OSError:
            return None

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``); data is kept."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL)."""
        self._signal(signal.SIGKILL, 10.0)

    def _signal(self, sig: signal.Signals, timeout: float) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def wipe(self) -> None:
        """Delete the data (stopped server only): every session and znode is gone."""
        if self.running:
            raise RuntimeError("stop the server before wiping its data")
        shutil.rmtree(self.data_dir / "data", ignore_errors=True)
