"""A cluster of real ``peer-ring-kv serve`` processes on this machine.

Used by ``peer-ring-kv demo`` and by the tests that drive the HTTP API against real nodes;
written to be reusable by the e2e suite's local driver. It starts each node as
``python -m peer_ring.kv.cli serve ...`` in its own process group, writes the node's output
to a log file, waits for readiness by polling ``GET /readyz`` (bounded by a deadline, and
failing fast when the process exits), and can kill (any signal), stop (SIGTERM) and restart
nodes.

Cleanup is layered, because a leaked node keeps its ports: :meth:`LocalCluster.close` (from
``async with`` or ``finally``) terminates every node, and an ``atexit`` hook SIGKILLs any
process group still alive when the interpreter exits (Ctrl-C, an uncaught error).

Two address layouts, as in production: one host with distinct ports
(``127.0.0.1:7101``, ``127.0.0.1:7102``...) or distinct loopback hosts sharing one port
(``127.0.0.1:7101``, ``127.0.0.2:7101``..., like pods; 127.0.0.0/8 aliases need no setup on
Linux).

Membership that changes at run time (the e2e suite scales clusters up and down): with
``peers_file``, nodes get ``--peers-file`` instead of a fixed ``--peers`` list, and
:meth:`LocalCluster.set_members` rewrites that file; every node re-reads it within a second.
With ``group_base`` (root only), node ``i`` runs with group id ``group_base + i``, so that
packet filters can tell its traffic apart (``iptables -m owner --gid-owner``): on loopback,
every outgoing connection has source address 127.0.0.1 whatever the node's own address.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import aiohttp

logger = logging.getLogger(__name__)

#: Offset between a node's peer port and its HTTP port when ports come from a base.
HTTP_PORT_OFFSET = 1000
_POLL_INTERVAL = 0.05
_PORT_ATTEMPTS = 100

# Process groups started by this module and not yet reaped: the atexit hook's list.
_LIVE_GROUPS: set[int] = set()


def _kill_leftovers() -> None:
    for pgid in list(_LIVE_GROUPS):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        _LIVE_GROUPS.discard(pgid)


atexit.register(_kill_leftovers)


class NodeFailedError(RuntimeError):
    """A node exited or did not become ready in time; the message ends with its log tail."""


@dataclass(frozen=True, slots=True)
class NodeAddress:
    """Where one node listens.

    Attributes:
        peer: gRPC ``host:port`` (the node's identity).
        http: HTTP API ``host:port``.
    """

    peer: str
    http: str

    @property
    def url(self) -> str:
        """Base URL of the node's HTTP API."""
        return f"http://{self.http}"


def allocate_addresses(
    count: int,
    *,
    hosts: Sequence[str] = ("127.0.0.1",),
    base_port: int | None = None,
) -> list[NodeAddress]:
    """Pick addresses for ``count`` nodes.

    With one host, every node gets its own peer and HTTP ports on it. With at least
    ``count`` hosts, node ``i`` runs on ``hosts[i]`` and all nodes share one peer port and
    one HTTP port (the pod layout).

    Args:
        count: number of nodes.
        hosts: one host, or one host per node.
        base_port: node ``i`` gets peer port ``base_port + i`` (one host) or ``base_port``
            (many hosts), and HTTP port peer port + 1000. ``None`` picks free ports.

    Raises:
        ValueError: bad counts or ports, or no free port found.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if len(hosts) != 1 and len(hosts) < count:
        raise ValueError(f"need 1 host or at least {count} hosts, got {len(hosts)}")
    shared = len(hosts) > 1
    node_hosts = list(hosts[:count]) if shared else [hosts[0]] * count
    if base_port is not None:
        top = base_port + (0 if shared else count - 1) + HTTP_PORT_OFFSET
        if base_port < 1 or top > 65535:
            raise ValueError(f"base port {base_port} leaves no room for {count} nodes")
        peers = [base_port if shared else base_port + i for i in range(count)]
        https = [p + HTTP_PORT_OFFSET for p in peers]
    elif shared:
        peer_port, http_port = _common_free_ports(node_hosts, 2)
        peers, https = [peer_port] * count, [http_port] * count
    else:
        ports = _free_ports(node_hosts[0], 2 * count)
        peers, https = ports[:count], ports[count:]
    return [
        NodeAddress(f"{_host(h)}:{p}", f"{_host(h)}:{q}")
        for h, p, q in zip(node_hosts, peers, https, strict=True)
    ]


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _free_ports(host: str, count: int) -> list[int]:
    # Hold every socket until all ports are chosen, so that no port is picked twice. The
    # port is released before the node binds it: another program could take it in between,
    # which the node reports as "address in use" (rare; the caller may retry).
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(_family(host), socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((host.strip("[]"), 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _common_free_ports(hosts: Sequence[str], count: int) -> list[int]:
    chosen: list[int] = []
    held: list[socket.socket] = []
    try:
        for _ in range(_PORT_ATTEMPTS):
            if len(chosen) == count:
                break
            first = socket.socket(_family(hosts[0]), socket.SOCK_STREAM)
            first.bind((hosts[0].strip("[]"), 0))
            port = int(first.getsockname()[1])
            group = [first]
            try:
                for host in hosts[1:]:
                    sock = socket.socket(_family(host), socket.SOCK_STREAM)
                    group.append(sock)
                    sock.bind((host.strip("[]"), port))
            except OSError:
                for sock in group:
                    sock.close()
                continue
            held.extend(group)
            chosen.append(port)
    finally:
        for sock in held:
            sock.close()
    if len(chosen) < count:
        raise ValueError(f"no port free on all of {', '.join(hosts)}")
    return chosen


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def loopback_aliases_available(hosts: Sequence[str]) -> bool:
    """True when every host can be bound (127.0.0.2+ work on Linux, not on macOS)."""
    for host in hosts:
        try:
            with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
                sock.bind((host.strip("[]"), 0))
        except OSError:
            return False
    return True


class LocalNode:
    """One ``serve`` process (started, killed and restarted by :class:`LocalCluster`)."""

    def __init__(
        self,
        index: int,
        address: NodeAddress,
        command: Sequence[str],
        log_path: Path,
        env: Mapping[str, str],
        *,
        group: int | None = None,
    ) -> None:
        self.index = index
        self.address = address
        self.command = list(command)
        self.log_path = log_path
        self._env = dict(env)
        #: Group id the process runs with (``None``: the caller's); see the module docs.
        self.group = group
        self.process: asyncio.subprocess.Process | None = None

    @property
    def name(self) -> str:
        """``node <index + 1>`` (what people count from)."""
        return f"node {self.index + 1}"

    @property
    def running(self) -> bool:
        """True while the process runs (not yet exited or reaped)."""
        return self.process is not None and self.process.returncode is None

    @property
    def pid(self) -> int | None:
        """The process id, when started."""
        return self.process.pid if self.process is not None else None

    async def start(self) -> None:
        """Start the process (appending its output to :attr:`log_path`)."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        with self.log_path.open("ab") as log:
            log.write(f"--- starting: {' '.join(self.command)}\n".encode())
            log.flush()
            # A new session: the node gets its own process group (killpg reaches all of it)
            # and a terminal's Ctrl-C reaches only the driver, which then stops the nodes.
            if self.group is None:
                self.process = await asyncio.create_subprocess_exec(
                    *self.command,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    env=self._env,
                    start_new_session=True,
                )
            else:
                self.process = await asyncio.create_subprocess_exec(
                    *self.command,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    env=self._env,
                    start_new_session=True,
                    group=self.group,
                    extra_groups=[],
                )
        _LIVE_GROUPS.add(self.process.pid)

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to the node's process group (no-op when it is not running)."""
        if self.process is None or self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    async def wait(self, within: float) -> int:
        """Wait for the process to exit; returns its exit status.

        Raises:
            TimeoutError: still running after ``within`` seconds.
        """
        if self.process is None:
            raise RuntimeError(f"{self.name} was never started")
        code = await asyncio.wait_for(self.process.wait(), within)
        _LIVE_GROUPS.discard(self.process.pid)
        return code

    async def kill(self, signum: int = signal.SIGKILL, within: float = 10.0) -> int:
        """Send ``signum`` (SIGKILL by default) and wait for the exit; returns its status."""
        self.send_signal(signum)
        return await self.wait(within)

    async def stop(self, grace: float = 10.0) -> int:
        """SIGTERM, then SIGKILL if the node has not exited within ``grace`` seconds."""
        if self.process is None:
            return 0
        self.send_signal(signal.SIGTERM)
        try:
            return await self.wait(grace)
        except TimeoutError:
            logger.warning("%s did not stop within %.0fs: killing it", self.name, grace)
            return await self.kill(signal.SIGKILL, grace)

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the node's output."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class LocalCluster:
    """Real ``peer-ring-kv serve`` nodes on this machine, with static discovery.

    Args:
        addresses: one entry per node (see :func:`allocate_addresses`).
        serve_args: extra ``serve`` flags given to every node (``--replication 3`` ...).
        env: extra environment variables for every node. ``PEER_RING_*`` variables of the
            calling environment are *not* inherited: the flags alone configure the nodes.
        log_dir: where ``node-<i>.log`` files go; a temporary directory (removed by
            :meth:`close` unless ``keep_logs``) when ``None``.
        python: interpreter that runs the nodes.
        keep_logs: keep a temporary ``log_dir`` after :meth:`close`.
        peers_file: when given, nodes discover each other through this file
            (``--peers-file``), which the cluster writes: every address at first, then
            whatever :meth:`set_members` says. ``None``: a fixed ``--peers`` list.
        group_base: when given, node ``i`` runs with group id ``group_base + i`` (needs
            root); ``None``: the caller's group.
        discovery_args: when given, ``discovery_args(address)`` returns the discovery flags
            of the node at ``address`` (``["--discovery", "etcd", "--discovery-option",
            ...]``) instead of ``--peers``/``--peers-file``: the nodes find each other
            through that discovery, and nodes can be added without a peers file.
        node_env: extra environment of single nodes, by index, on top of ``env`` (a
            skewed clock for one node: ``{1: {"LD_PRELOAD": ..., "FAKETIME": "+2s"}}``).

    Example:
        >>> async with LocalCluster(allocate_addresses(3)) as cluster:  # doctest: +SKIP
        ...     await cluster.start()
        ...     await cluster.nodes[2].kill()
    """

    def __init__(
        self,
        addresses: Sequence[NodeAddress],
        *,
        serve_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
        python: str = sys.executable,
        keep_logs: bool = False,
        peers_file: Path | None = None,
        group_base: int | None = None,
        discovery_args: Callable[[NodeAddress], Sequence[str]] | None = None,
        node_env: Mapping[int, Mapping[str, str]] | None = None,
    ) -> None:
        if discovery_args is not None and peers_file is not None:
            raise ValueError("give peers_file or discovery_args, not both")
        self._discovery_args = discovery_args
        self._own_log_dir = log_dir is None
        self.log_dir = (
            Path(tempfile.mkdtemp(prefix="peer-ring-kv-")) if log_dir is None else log_dir
        )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.keep_logs = keep_logs
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("PEER_RING_")}
        child_env["PYTHONUNBUFFERED"] = "1"
        child_env.update(env or {})
        self._python = python
        self._serve_args = list(serve_args)
        self._child_env = child_env
        self._node_env = {i: dict(e) for i, e in (node_env or {}).items()}
        self._group_base = group_base
        self.peers_file = peers_file
        self._peers = ",".join(a.peer for a in addresses)
        self.nodes: list[LocalNode] = []
        for address in addresses:
            self._new_node(address)
        if peers_file is not None:
            self.set_members(range(len(self.nodes)))
        self._session: aiohttp.ClientSession | None = None

    def _new_node(self, address: NodeAddress) -> LocalNode:
        index = len(self.nodes)
        if self._discovery_args is not None:
            discovery = list(self._discovery_args(address))
        elif self.peers_file is not None:
            discovery = ["--peers-file", str(self.peers_file)]
        else:
            discovery = ["--peers", self._peers]
        node = LocalNode(
            index,
            address,
            [
                self._python,
                "-m",
                "peer_ring.kv.cli",
                "serve",
                "--listen",
                address.peer,
                "--http",
                address.http,
                *discovery,
                *self._serve_args,
            ],
            self.log_dir / f"node-{index + 1}.log",
            {**self._child_env, **self._node_env.get(index, {})},
            group=None if self._group_base is None else self._group_base + index,
        )
        self.nodes.append(node)
        return node

    def add_node(self, address: NodeAddress) -> LocalNode:
        """Add a node (not started, not yet a member: see :meth:`set_members`).

        Raises:
            RuntimeError: the cluster has no ``peers_file`` (a fixed ``--peers`` list
                cannot grow).
        """
        if self.peers_file is None and self._discovery_args is None:
            raise RuntimeError("adding nodes needs a cluster created with peers_file")
        return self._new_node(address)

    def set_members(self, indexes: Iterable[int]) -> list[str]:
        """Write the peers file so that it lists the nodes ``indexes``; returns the list.

        The file is replaced atomically (a temporary file renamed over it), so a node never
        reads half a list.

        Raises:
            RuntimeError: the cluster has no ``peers_file``.
        """
        if self.peers_file is None:
            raise RuntimeError("membership changes need a cluster created with peers_file")
        peers = [self.nodes[i].address.peer for i in sorted(set(indexes))]
        tmp = self.peers_file.with_name(f".{self.peers_file.name}.tmp")
        tmp.write_text("".join(f"{p}\n" for p in peers), encoding="utf-8")
        os.replace(tmp, self.peers_file)
        return peers

    async def __aenter__(self) -> LocalCluster:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0))
        return self._session

    async def start(self, ready_within: float = 30.0) -> None:
        """Start every node that is not running and wait until all are ready.

        Raises:
            NodeFailedError: a node exited or was not ready within ``ready_within`` seconds.
        """
        for node in self.nodes:
            if not node.running:
                await node.start()
        await asyncio.gather(*(self.wait_ready(n.index, ready_within) for n in self.nodes))

    async def start_node(self, index: int, ready_within: float = 30.0) -> None:
        """Start (or restart) node ``index`` and wait until it is ready."""
        await self.nodes[index].start()
        await self.wait_ready(index, ready_within)

    async def wait_ready(self, index: int, within: float = 30.0) -> None:
        """Poll the node's ``/readyz`` until it answers 200.

        Raises:
            NodeFailedError: the process exited, or ``within`` seconds passed.
        """
        node = self.nodes[index]
        url = f"{node.address.url}/readyz"
        deadline = time.monotonic() + within
        last = "no answer yet"
        # Bounded twice: by the deadline, and by a poll count derived from it.
        for _ in range(int(within / _POLL_INTERVAL) + 1):
            if not node.running:
                code = node.process.returncode if node.process is not None else None
                raise NodeFailedError(
                    f"{node.name} ({node.address.peer}) exited with status {code} before it "
                    f"was ready; log {node.log_path}:\n{node.log_tail()}"
                )
            try:
                async with self._http().get(url) as response:
                    if response.status == 200:
                        return
                    last = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(_POLL_INTERVAL)
        raise NodeFailedError(
            f"{node.name} ({node.address.peer}) not ready after {within:g}s ({last}); "
            f"log {node.log_path}:\n{node.log_tail()}"
        )

    async def close(self, grace: float = 10.0) -> None:
        """Stop every node (SIGTERM, then SIGKILL after ``grace`` seconds); release resources."""
        try:
            await asyncio.gather(*(n.stop(grace) for n in self.nodes if n.running))
        finally:
            for node in self.nodes:  # whatever survived an error above
                if node.running:
                    node.send_signal(signal.SIGKILL)
                    with contextlib.suppress(Exception):
                        await node.wait(grace)
            if self._session is not None:
                await self._session.close()
                self._session = None
            if self._own_log_dir and not self.keep_logs:
                shutil.rmtree(self.log_dir, ignore_errors=True)
