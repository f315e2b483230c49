"""A real etcd for the discovery tests, started on loopback.

etcd comes from ``tools/k8s-test-env`` (``$PEER_RING_K8S_BIN`` or ``~/.cache/peer-ring/bin``),
or from ``PATH``. The session fixture ``etcd_server`` runs one etcd for the tests that only
need a working server (each test gets its own key prefix); tests that stop, kill or
restart etcd take ``own_etcd``, a server of their own. Without the binary the tests skip
with the command to run (and fail in CI, through ``require_component``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from peer_ring.core import Member
from peer_ring.core.testing import free_port
from peer_ring.discovery.etcd.testing import INSTALL_HINT, etcd_binary
from peer_ring.discovery.etcd.testing import EtcdServer as BaseEtcdServer

#: Upper bound for any wait on etcd or on discovery (a shared 2-core machine).
WAIT = 60.0


class EtcdServer(BaseEtcdServer):
    """The package's test server, with non-blocking stop/start for async tests."""

    async def astop(self, sig: int = signal.SIGTERM) -> None:
        """:meth:`stop` without blocking the event loop (etcd's graceful stop takes seconds)."""
        await asyncio.to_thread(self.stop, sig)

    async def astart(self) -> None:
        """:meth:`start` without blocking the event loop."""
        await asyncio.to_thread(self.start)


@contextlib.contextmanager
def _server(require_component: Callable[..., None]) -> Iterator[EtcdServer]:
    binary = etcd_binary()
    require_component("etcd", binary is not None, INSTALL_HINT)
    assert binary is not None
    workdir = Path(tempfile.mkdtemp(prefix="peer-ring-etcd-"))
    server = EtcdServer(binary, workdir)
    try:
        server.start()
        yield server
    finally:
        server.close()
        if not os.environ.get("PEER_RING_KEEP_ETCD_LOGS"):
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def etcd_server(require_component: Callable[..., None]) -> Iterator[EtcdServer]:
    """One etcd for the whole session (tests must not stop it)."""
    with _server(require_component) as server:
        yield server


@pytest.fixture
def own_etcd(require_component: Callable[..., None]) -> Iterator[EtcdServer]:
    """An etcd for this test alone: it may stop, kill or restart it."""
    with _server(require_component) as server:
        yield server


# --------------------------------------------------------------------------------------
# per-test helpers
# --------------------------------------------------------------------------------------


def addresses(members: frozenset[Member]) -> set[str]:
    """The addresses of a member set."""
    return {m.address for m in members}


@dataclass
class Recorder:
    """Consumes ``discovery.watch()`` in the background, keeping every snapshot and its time."""

    snapshots: list[frozenset[Member]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    async def _run(self, discovery: Any) -> None:
        async for snapshot in discovery.watch():
            self.snapshots.append(snapshot)
            self.times.append(time.monotonic())
            self.changed.set()

    def start(self, discovery: Any) -> Recorder:
        # watch() yields changes after start(): begin from the member set as it is now.
        self.snapshots.append(discovery.members)
        self.times.append(time.monotonic())
        self.task = asyncio.create_task(self._run(discovery))
        return self

    async def wait_for(self, expected: set[str], within: float = WAIT) -> float:
        """Wait until the latest snapshot's addresses equal ``expected``; returns its time."""
        async with asyncio.timeout(within):
            while not (self.snapshots and addresses(self.snapshots[-1]) == expected):
                self.changed.clear()
                await self.changed.wait()
        return self.times[-1]


async def wait_until(check: Callable[[], bool], within: float = WAIT) -> None:
    """Poll ``check`` until true (for counters that signal no event); TimeoutError after."""
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 - polling a counter that has no event
            await asyncio.sleep(0.02)


class TcpProxy:
    """A loopback TCP proxy a test can cut (``block``) or silence (``freeze``).

    ``block()`` resets every connection and refuses new ones until ``heal()``: etcd
    unreachable. ``freeze()`` stops forwarding on the open connections without closing
    them (a black hole: the watch goes silent) while new connections work.
    """

    def __init__(self, target_port: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self._frozen: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.blocked = False
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.blocked:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._connections.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                if dst in self._frozen:
                    continue  # swallowed: the peer hears nothing
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.discard(dst)
            dst.transport.abort()

    def block(self) -> None:
        self.blocked = True
        for writer in list(self._connections):
            writer.transport.abort()
        self._connections.clear()

    def freeze(self) -> None:
        self._frozen.update(self._connections)

    def heal(self) -> None:
        self.blocked = False

    async def close(self) -> None:
        self.block()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class Env:
    """One test's etcd access: a unique prefix, an admin client, a discovery factory.

    Tests reach the helpers through it, since test modules cannot import a conftest.
    """

    addresses = staticmethod(addresses)
    wait_until = staticmethod(wait_until)
    free_port = staticmethod(free_port)

    def __init__(self, server: EtcdServer) -> None:
        from peer_ring.discovery.etcd import EtcdClient

        self.server = server
        self.prefix = f"/peer-ring-test/{uuid.uuid4().hex[:10]}/"
        self.admin = EtcdClient([server.endpoint], request_timeout=10.0)
        self._discoveries: list[Any] = []
        self._recorders: list[Recorder] = []
        self._proxies: list[TcpProxy] = []
        self._ports = 7100

    def next_address(self) -> str:
        self._ports += 1
        return f"127.0.0.1:{self._ports}"

    def discovery(self, **options: Any) -> Any:
        """An EtcdDiscovery on this test's prefix (a new address unless told); stopped later."""
        from peer_ring.discovery.etcd import EtcdDiscovery

        options.setdefault("endpoints", self.server.endpoint)
        options.setdefault("prefix", self.prefix)
        options.setdefault("self_address", self.next_address())
        options.setdefault("startup_timeout", 20.0)
        discovery = EtcdDiscovery(**options)
        self._discoveries.append(discovery)
        return discovery

    def record(self, discovery: Any) -> Recorder:
        recorder = Recorder().start(discovery)
        self._recorders.append(recorder)
        return recorder

    async def proxy(self) -> TcpProxy:
        proxy = await TcpProxy(self.server.port).start()
        self._proxies.append(proxy)
        return proxy

    async def keys(self) -> dict[str, int]:
        """Key -> lease of every key under the prefix."""
        listing = await self.admin.list_prefix(self.prefix.encode())
        return {kv.key.decode(): kv.lease for kv in listing.kvs}

    async def close(self) -> None:
        for discovery in self._discoveries:
            await discovery.stop()
        for recorder in self._recorders:
            if recorder.task is not None:
                # watch() ends after stop(); a recorder must have finished by itself.
                await asyncio.wait_for(recorder.task, timeout=10)
        for proxy in self._proxies:
            await proxy.close()
        await self.admin.close()


@pytest.fixture
async def env(etcd_server: EtcdServer) -> AsyncIterator[Env]:
    """The shared etcd, with this test's own prefix."""
    test_env = Env(etcd_server)
    try:
        yield test_env
    finally:
        await test_env.close()


@pytest.fixture
async def own_env(own_etcd: EtcdServer) -> AsyncIterator[Env]:
    """An etcd of this test's own (to stop, kill or restart)."""
    test_env = Env(own_etcd)
    try:
        yield test_env
    finally:
        await test_env.close()
