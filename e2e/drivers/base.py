"""The cluster-driver interface every e2e scenario is written against.

A scenario never starts a process or runs ``kubectl`` itself: it asks a driver to start N
nodes, to inject a fault on one of them (kill -9, SIGSTOP, a network partition, a graceful
leave...), and for the HTTP endpoints of the nodes that currently serve. The same scenario
then runs on this machine (:class:`~e2e.drivers.local.LocalDriver`: ``peer-ring-kv serve``
processes on 127.0.0.x) and on Kubernetes (:class:`~e2e.drivers.kind.KindDriver`: the
Deployment of ``deploy/`` on a kind cluster).

Nodes are named by the driver (``n1``, ``n2``... locally; pod names on Kubernetes). A node's
*identity in the ring* is its peer address (:attr:`Endpoint.peer`), which is what
``GET /cluster`` lists; the checker maps one to the other through :meth:`endpoints`.

Contract of the fault methods (each returns once the fault is in place):

* :meth:`kill` — SIGKILL the node process. It stays down until :meth:`restart` (a platform
  that restarts processes on its own documents it, see the kind driver).
* :meth:`pause` / :meth:`resume` — SIGSTOP / SIGCONT: the node keeps its sockets open but
  answers nothing, the nastiest failure for timeouts.
* :meth:`restart` — stop the node (gracefully with SIGTERM, which makes it hand its data
  off and leave, or with SIGKILL), start it again with an empty memory, wait until ready.
* :meth:`add_node` — scale up by one: a new node joins, every member learns about it.
* :meth:`remove_node` — scale down by one: SIGTERM (graceful leave), then out of the
  member set for good.
* :meth:`partition` / :meth:`heal` — cut the node's peer traffic in both directions
  (its HTTP API stays reachable: a client next to it still talks to it), then restore it.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from enum import StrEnum


class Capability(StrEnum):
    """What a driver can do beyond starting and stopping nodes."""

    KILL = "kill"
    PAUSE = "pause"
    RESTART = "restart"
    SCALE = "scale"
    PARTITION = "partition"


class DriverError(RuntimeError):
    """A driver operation failed (a node did not start, a fault could not be injected)."""


class UnsupportedError(DriverError):
    """The driver cannot do this here (no iptables, not root...); the message says why."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where one node can be reached.

    Attributes:
        name: the driver's name of the node (``n1``, a pod name).
        peer: the node's identity in the ring (``host:port`` of its peer listener), as
            ``GET /cluster`` lists it.
        url: base URL of the node's HTTP API, reachable from the test process.
    """

    name: str
    peer: str
    url: str


@dataclass(frozen=True, slots=True)
class StopResult:
    """How a node stopped.

    Attributes:
        name: the node.
        seconds: from the signal to the exit.
        exit_status: the process exit status (``None`` when the platform hides it).
        forced: True when the node did not exit within its grace period and was killed.
    """

    name: str
    seconds: float
    exit_status: int | None
    forced: bool


class ClusterDriver(abc.ABC):
    """Start, fault and observe a cluster of peer-ring KV nodes (see the module docs).

    Drivers are async context managers: leaving the ``async with`` block (or calling
    :meth:`close`) removes every fault it injected and stops every node it started, also
    after an error.
    """

    #: Short name of the platform (``local``, ``kind``), for reports.
    name: str = "?"
    #: What this driver can do here (a local driver without root cannot partition).
    capabilities: frozenset[Capability] = frozenset()

    async def __aenter__(self) -> ClusterDriver:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def require(self, capability: Capability) -> None:
        """Raise :class:`UnsupportedError` unless this driver has ``capability``."""
        if capability not in self.capabilities:
            raise UnsupportedError(f"the {self.name} driver cannot {capability.value} here")

    # -- lifecycle -------------------------------------------------------------------------

    @abc.abstractmethod
    async def start(self, count: int, *, ready_within: float = 60.0) -> list[str]:
        """Start ``count`` nodes at the same moment, all knowing each other; wait until
        every one is ready (``/readyz``). Returns their names.

        Raises:
            DriverError: a node exited or was not ready in time (message with its log).
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Heal every fault, stop every node, release every resource; idempotent."""

    # -- observation -----------------------------------------------------------------------

    @abc.abstractmethod
    def members(self) -> list[str]:
        """Names of the nodes in the member set (killed and paused ones included)."""

    @abc.abstractmethod
    def endpoint(self, name: str) -> Endpoint:
        """The endpoint of node ``name`` (whatever its state)."""

    @abc.abstractmethod
    def is_serving(self, name: str) -> bool:
        """True when node ``name`` runs and is neither paused nor killed."""

    def endpoints(self) -> list[Endpoint]:
        """Endpoints of the members that serve now (not killed, not paused): what a client
        with health checks would use."""
        return [self.endpoint(n) for n in self.members() if self.is_serving(n)]

    def all_endpoints(self) -> list[Endpoint]:
        """Endpoints of every member, serving or not."""
        return [self.endpoint(n) for n in self.members()]

    @abc.abstractmethod
    async def wait_ready(self, name: str, within: float = 60.0) -> None:
        """Wait until node ``name`` answers ``/readyz`` with 200.

        Raises:
            DriverError: it did not, or its process exited.
        """

    def log_tail(self, name: str, lines: int = 40) -> str:
        """The last lines of node ``name``'s log (for failure messages)."""
        return "(no log)"

    def describe(self) -> str:
        """One line about where the nodes run and where their logs are."""
        return self.name

    # -- faults ----------------------------------------------------------------------------

    @abc.abstractmethod
    async def kill(self, name: str) -> None:
        """SIGKILL node ``name``; it stays down until :meth:`restart`."""

    @abc.abstractmethod
    async def pause(self, name: str) -> None:
        """SIGSTOP node ``name``."""

    @abc.abstractmethod
    async def resume(self, name: str) -> None:
        """SIGCONT node ``name``."""

    @abc.abstractmethod
    async def restart(
        self, name: str, *, graceful: bool = True, grace: float = 45.0, ready_within: float = 60.0
    ) -> str:
        """Stop node ``name`` (SIGTERM and up to ``grace`` seconds for its handoff when
        ``graceful``, else SIGKILL; nothing when it is already down), start it again with an
        empty memory and wait until it is ready. Returns the node's name afterwards (the
        same locally; a replacement pod's name on Kubernetes)."""

    @abc.abstractmethod
    async def add_node(self, *, ready_within: float = 60.0) -> str:
        """Start one more node, make it a member everywhere, wait until it is ready.

        Returns its name.
        """

    @abc.abstractmethod
    async def remove_node(self, name: str, *, grace: float = 45.0) -> StopResult:
        """Gracefully remove node ``name`` for good: SIGTERM (it hands its partitions off,
        then exits; SIGKILL after ``grace`` seconds), then take it out of the member set."""

    @abc.abstractmethod
    async def partition(self, name: str) -> None:
        """Cut node ``name`` off from every other node (both directions, peer traffic)."""

    @abc.abstractmethod
    async def heal(self, name: str) -> None:
        """Undo :meth:`partition` for node ``name``."""
