"""The ``local`` driver: real ``peer-ring-kv serve`` processes on 127.0.0.x addresses.

Built on :class:`peer_ring.kv._local_cluster.LocalCluster` (the same code that runs
``peer-ring-kv demo``): each node is a process in its own process group with its log in a
file, readiness is ``GET /readyz``.

* Addresses: node *i* listens on ``127.A.B.i`` with one peer port and one HTTP port shared
  by all nodes (the pod layout); ``A.B`` is random per driver, so that concurrent runs (and
  the package tests, which use 127.0.0.x) never share an address.
* Membership: nodes discover each other through a *peers file* (``--peers-file``), which
  the driver rewrites to scale up or down; every node re-reads it within a second. Address
  slots up to ``capacity`` are reserved at start, so that added nodes get the same ports.
* Faults: signals to the node's process group (SIGKILL, SIGSTOP/SIGCONT, SIGTERM) and
  iptables rules (:mod:`e2e.drivers.netfault`), which need each node to run with its own
  group id (so only as root).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from e2e.drivers.base import (
    Capability,
    ClusterDriver,
    DriverError,
    Endpoint,
    StopResult,
    UnsupportedError,
)
from e2e.drivers.netfault import IptablesFaults, Isolation
from peer_ring.kv._local_cluster import (
    LocalCluster,
    LocalNode,
    NodeAddress,
    NodeFailedError,
    allocate_addresses,
)

logger = logging.getLogger(__name__)

#: Group ids of nodes are GROUP_BASE + slot (+ a per-process offset; see __init__).
GROUP_BASE = 40000


def random_hosts(count: int, rng: random.Random | None = None) -> list[str]:
    """``count`` loopback addresses ``127.A.B.1..count`` with a random ``A.B``.

    ``A`` is at least 100: the package tests and the demo use 127.0.0.x.
    """
    r = rng or random.Random()
    a, b = r.randint(100, 250), r.randint(1, 254)
    return [f"127.{a}.{b}.{i}" for i in range(1, count + 1)]


class LocalDriver(ClusterDriver):
    """Nodes as local processes (see the module docs).

    Args:
        log_dir: where the peers file and ``node-<i>.log`` files go (kept after close).
        capacity: most nodes this cluster will ever have (address slots reserved at start).
        serve_args: extra ``serve`` flags for every node (``--replication 3`` ...).
        faults: iptables partitions; ``None`` leaves out :attr:`Capability.PARTITION`.
        hosts: node addresses (default: :func:`random_hosts`).
        discovery_args: ``discovery_args(address)`` gives a node's discovery flags (etcd,
            ZooKeeper, gossip...) instead of the peers file; membership then follows that
            discovery: a removed node leaves it by its graceful leave, an added one joins it.
    """

    name = "local"

    def __init__(
        self,
        log_dir: Path,
        *,
        capacity: int = 5,
        serve_args: Sequence[str] = (),
        faults: IptablesFaults | None = None,
        hosts: Sequence[str] | None = None,
        discovery_args: Callable[[NodeAddress], Sequence[str]] | None = None,
    ) -> None:
        self._discovery_args = discovery_args
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.capacity = capacity
        self.serve_args = list(serve_args)
        self._faults = faults
        self._hosts = list(hosts) if hosts is not None else random_hosts(capacity)
        self._cluster: LocalCluster | None = None
        self._members: list[int] = []  # node indexes in the member set, in join order
        self._paused: set[int] = set()
        # Stopping, or spawned and not yet ready: clients keep away (as a load balancer
        # with readiness checks would).
        self._unavailable: set[int] = set()
        self._removed: set[int] = set()
        self._spare: list[NodeAddress] = []
        root = os.geteuid() == 0
        # Distinct group ids per driver (two concurrent runs never share one), only as root.
        self._group_base = GROUP_BASE + (os.getpid() % 1000) * 16 if root else None
        caps = {Capability.KILL, Capability.PAUSE, Capability.RESTART, Capability.SCALE}
        if faults is not None and self._group_base is not None:
            caps.add(Capability.PARTITION)
        self.capabilities = frozenset(caps)

    # -- helpers ---------------------------------------------------------------------------

    @property
    def cluster(self) -> LocalCluster:
        """The underlying process cluster (after :meth:`start`)."""
        if self._cluster is None:
            raise DriverError("the cluster is not started")
        return self._cluster

    def _index(self, name: str) -> int:
        if not name.startswith("n") or not name[1:].isdigit():
            raise DriverError(f"no node named {name!r}")
        index = int(name[1:]) - 1
        if self._cluster is None or not 0 <= index < len(self._cluster.nodes):
            raise DriverError(f"no node named {name!r}")
        return index

    def _node(self, name: str) -> LocalNode:
        return self.cluster.nodes[self._index(name)]

    @staticmethod
    def _name(index: int) -> str:
        return f"n{index + 1}"

    def _fail(self, node: LocalNode, error: Exception) -> DriverError:
        return DriverError(f"{self._name(node.index)} ({node.address.peer}): {error}")

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, count: int, *, ready_within: float = 60.0) -> list[str]:
        if self._cluster is not None:
            raise DriverError("already started")
        if not 1 <= count <= self.capacity:
            raise DriverError(f"count must be 1..{self.capacity}, got {count}")
        addresses = allocate_addresses(self.capacity, hosts=self._hosts)
        self._cluster = LocalCluster(
            addresses[:count],
            serve_args=self.serve_args,
            log_dir=self.log_dir,
            keep_logs=True,
            peers_file=None if self._discovery_args else self.log_dir / "peers",
            group_base=self._group_base,
            discovery_args=self._discovery_args,
        )
        self._spare = list(addresses[count:])
        self._members = list(range(count))
        # Spawn every process before waiting for any: "started at the same moment".
        for index in self._members:
            await self.cluster.nodes[index].start()
        await asyncio.gather(*(self._until_ready(i, ready_within) for i in self._members))
        return [self._name(i) for i in self._members]

    async def _until_ready(self, index: int, within: float, *, spawn: bool = False) -> None:
        """(Start and) wait for node ``index``; it serves clients only once ready."""
        self._unavailable.add(index)
        try:
            if spawn:
                await self.cluster.start_node(index, within)
            else:
                await self.cluster.wait_ready(index, within)
        except NodeFailedError as exc:
            raise DriverError(str(exc)) from None
        finally:
            self._unavailable.discard(index)

    async def close(self) -> None:
        cluster, self._cluster = self._cluster, None
        try:
            if self._faults is not None:
                for key in list(self._faults.isolated):
                    await self._faults.heal(key)
        finally:
            if cluster is not None:
                # Tear-down needs no graceful leave: SIGCONT (a stopped process ignores
                # SIGTERM) and SIGKILL every group, then let LocalCluster reap them.
                for node in cluster.nodes:
                    node.send_signal(signal.SIGCONT)
                    node.send_signal(signal.SIGKILL)
                await cluster.close(grace=10.0)

    # -- observation -------------------------------------------------------------------------

    def members(self) -> list[str]:
        return [self._name(i) for i in self._members]

    def endpoint(self, name: str) -> Endpoint:
        node = self._node(name)
        return Endpoint(name, node.address.peer, node.address.url)

    def is_serving(self, name: str) -> bool:
        index = self._index(name)
        node = self.cluster.nodes[index]
        return node.running and index not in self._paused and index not in self._unavailable

    async def wait_ready(self, name: str, within: float = 60.0) -> None:
        await self._until_ready(self._index(name), within)

    def log_tail(self, name: str, lines: int = 40) -> str:
        return self._node(name).log_tail(lines)

    def describe(self) -> str:
        hosts = f"{self._hosts[0]}..{self._hosts[-1]}"
        return f"local processes on {hosts}, logs in {self.log_dir}"

    def pid(self, name: str) -> int | None:
        """The process id of node ``name`` (None when never started)."""
        return self._node(name).pid

    # -- faults ----------------------------------------------------------------------------

    async def kill(self, name: str) -> None:
        node = self._node(name)
        self._paused.discard(node.index)
        if not node.running:
            return
        node.send_signal(signal.SIGKILL)
        await node.wait(10.0)

    async def pause(self, name: str) -> None:
        node = self._node(name)
        if not node.running:
            raise DriverError(f"{name} is not running")
        node.send_signal(signal.SIGSTOP)
        self._paused.add(node.index)

    async def resume(self, name: str) -> None:
        node = self._node(name)
        node.send_signal(signal.SIGCONT)
        self._paused.discard(node.index)

    async def _stop(self, node: LocalNode, *, graceful: bool, grace: float) -> StopResult:
        name = self._name(node.index)
        started = time.monotonic()
        if not node.running:
            return StopResult(name, 0.0, node.process.returncode if node.process else None, False)
        self._unavailable.add(node.index)  # out of rotation before the signal
        if node.index in self._paused:
            node.send_signal(signal.SIGCONT)  # a stopped process would not act on SIGTERM
            self._paused.discard(node.index)
        if not graceful:
            status = await node.kill(signal.SIGKILL, 10.0)
            return StopResult(name, time.monotonic() - started, status, False)
        node.send_signal(signal.SIGTERM)
        try:
            status = await node.wait(grace)
            forced = False
        except TimeoutError:
            logger.warning("%s did not exit within %.0fs of SIGTERM: SIGKILL", name, grace)
            status = await node.kill(signal.SIGKILL, 10.0)
            forced = True
        return StopResult(name, time.monotonic() - started, status, forced)

    async def restart(
        self, name: str, *, graceful: bool = True, grace: float = 45.0, ready_within: float = 60.0
    ) -> str:
        node = self._node(name)
        await self._stop(node, graceful=graceful, grace=grace)
        await self._until_ready(node.index, ready_within, spawn=True)
        return name

    async def add_node(self, *, ready_within: float = 60.0) -> str:
        if not self._spare:
            raise UnsupportedError(f"no address slot left (capacity {self.capacity})")
        node = self.cluster.add_node(self._spare.pop(0))
        # Listed first, started next: the new node reads a file that names it, and the
        # others learn about it within a poll interval (the probes of a peer that is not
        # listening yet fail fast with "connection refused").
        self._members.append(node.index)
        if self.cluster.peers_file is not None:
            self.cluster.set_members(self._members)
        await self._until_ready(node.index, ready_within, spawn=True)
        return self._name(node.index)

    async def remove_node(self, name: str, *, grace: float = 45.0) -> StopResult:
        node = self._node(name)
        # SIGTERM first: the leave protocol tells every peer, hands the partitions off and
        # keeps the node out of their rings even while the file still lists it; the file
        # then makes the removal permanent.
        result = await self._stop(node, graceful=True, grace=grace)
        with contextlib.suppress(ValueError):
            self._members.remove(node.index)
        self._removed.add(node.index)
        if self.cluster.peers_file is not None:
            self.cluster.set_members(self._members)
        return result

    def _isolation(self, node: LocalNode) -> Isolation:
        if self._group_base is None or node.group is None:
            raise UnsupportedError("partitions need root (nodes run with their own group id)")
        host, _, port = node.address.peer.rpartition(":")
        return Isolation(host, int(port), node.group)

    async def partition(self, name: str) -> None:
        if self._faults is None:
            raise UnsupportedError("no iptables here (see the e2e conftest)")
        node = self._node(name)
        await self._faults.isolate(name, self._isolation(node))

    async def heal(self, name: str) -> None:
        if self._faults is None:
            raise UnsupportedError("no iptables here (see the e2e conftest)")
        await self._faults.heal(name)
