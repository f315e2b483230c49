"""A real ZooKeeper server for the discovery tests, started once per test session.

The server is Debian's ``zookeeper`` package run as a standalone server on a free loopback
port with a temporary data folder (``peer_ring.discovery.zookeeper.testing``). Without it
the tests skip with the command to install it, or fail in CI (``require_component``).
Each test works under its own path, so tests share the server without seeing each
other's members; tests that restart or wipe ZooKeeper start their own server.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from peer_ring.discovery.zookeeper import ZooKeeperDiscovery
from peer_ring.discovery.zookeeper.testing import (
    INSTALL_HINT,
    ZooKeeperServer,
    zookeeper_available,
)

#: Session timeout the tests request (seconds): short, so expiry tests are quick.
SESSION = 2.0


@pytest.fixture(scope="session")
def zk_available(require_component) -> None:
    require_component("zookeeper", zookeeper_available(), INSTALL_HINT)


@pytest.fixture(scope="session")
def zk_server(zk_available, tmp_path_factory) -> Iterator[ZooKeeperServer]:
    """One ZooKeeper server for the whole session."""
    server = ZooKeeperServer(tmp_path_factory.mktemp("zookeeper"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_zk_server(zk_available, tmp_path) -> Iterator[ZooKeeperServer]:
    """A ZooKeeper server of this test alone (for tests that stop or wipe it)."""
    server = ZooKeeperServer(tmp_path / "zookeeper")
    server.start()
    yield server
    server.kill()


@pytest.fixture
def zk_path() -> str:
    """A path of this test alone."""
    return f"/peer-ring-tests/{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def make_discovery(zk_server, zk_path) -> AsyncIterator[Callable[..., ZooKeeperDiscovery]]:
    """Build discoveries on the shared server under this test's path; stopped at the end."""
    made: list[ZooKeeperDiscovery] = []

    def make(address: str, **kwargs) -> ZooKeeperDiscovery:
        kwargs.setdefault("path", zk_path)
        kwargs.setdefault("session_timeout", SESSION)
        hosts = kwargs.pop("hosts", zk_server.hosts)
        discovery = ZooKeeperDiscovery(hosts, address, **kwargs)
        made.append(discovery)
        return discovery

    yield make
    await asyncio.gather(*(d.stop() for d in made))


MEMBER_SCRIPT = """
import asyncio, signal, sys
from peer_ring.discovery.zookeeper import ZooKeeperDiscovery

async def main():
    hosts, address, path, session = sys.argv[1:5]
    discovery = ZooKeeperDiscovery(hosts, address, path=path, session_timeout=float(session))
    await discovery.start()
    print("ready", discovery.session_id, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await discovery.stop()

asyncio.run(main())
"""


@pytest.fixture
def member_process(zk_server, zk_path, tmp_path):
    """Start a member in its own process: ``start(address) -> Popen`` (killed at the end)."""
    procs: list[subprocess.Popen[str]] = []

    def start(address: str, session: float = SESSION) -> subprocess.Popen[str]:
        with (tmp_path / f"member-{len(procs)}.log").open("w") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    MEMBER_SCRIPT,
                    zk_server.hosts,
                    address,
                    zk_path,
                    str(session),
                ],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until registered (or the process died)
        assert line.startswith("ready"), f"member {address} did not start: {line!r}"
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
