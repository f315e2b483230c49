"""Core test configuration: the fake-time event loop for tests marked ``fake_time``, and the
transport harness (``transport_kind``, ``nodes``) shared by the gRPC and TCP transport tests,
the in-memory cluster (``harness``) of the data-movement tests, ``app_cluster``: nodes
each running a test's own application (the commands and handlers it registers), and
``review_cluster``: the review tests' 3-node clusters over real transports, and
``raw_tcp_peer``: a hand-driven peer of the TCP transport.

A test (or module, with ``pytestmark``) marked ``@pytest.mark.fake_time`` runs on a
:class:`~peer_ring.core.testing.FakeClockEventLoop`: the loop's time is a fresh
:class:`~peer_ring.core.testing.FakeClock` (the ``loop_clock`` fixture), and whenever no
task can run the clock jumps to the next timer. Timeouts, suspicion and backoff of
minutes then take milliseconds, and never depend on the machine's speed. Other tests run
on the default asyncio loop.
"""

from __future__ import annotations

import asyncio
import struct
import subprocess
import sys
import types
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import pytest

from peer_ring.core import Command, CommandContext, DataHooks, PeerRing, PeerRingConfig
from peer_ring.core._errors import (
    PeerUnavailableError,
    QuorumNotReachedError,
    UnknownCommandError,
)
from peer_ring.core._types import Request, Response, Status, TransferRequest
from peer_ring.core.testing import (
    FakeClock,
    FakeClockEventLoop,
    FixedDiscovery,
    MemoryCluster,
    MemoryNetwork,
    current_clock,
    fake_time_config,
    free_port,
    free_port_block,
    settle_loop,
)
from peer_ring.core.transport import GrpcTransport, TcpTransport, Transport, TransportLimits
from peer_ring.core.transport._tcp_wire import PREAMBLE


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """One loop factory per test: the fake-time loop for ``fake_time`` tests."""
    if item.get_closest_marker("fake_time") is not None:
        return {"fake_time": FakeClockEventLoop}
    return {"asyncio": asyncio.new_event_loop}


@pytest.fixture
async def clock() -> FakeClock:
    """The running fake-time loop's clock, as ``loop_clock`` (``fake_time`` tests only)."""
    return current_clock()


@pytest.fixture
async def harness(clock: FakeClock) -> AsyncIterator[MemoryCluster]:
    """Data-movement tests' cluster: a ``MemoryCluster`` with ``fake_time_config()``.

    Empty at first (``await harness.start(...)``/``start_ready(...)``); every node it
    started is stopped after the test. ``fake_time`` tests only.
    """
    cluster = MemoryCluster(clock, MemoryNetwork(clock), fake_time_config())
    yield cluster
    await cluster.stop_all()


@pytest.fixture
def network(harness: MemoryCluster) -> MemoryNetwork:
    """The in-memory network of ``harness`` (to cut, partition or pause links)."""
    return harness.network


@pytest.fixture(params=["grpc", "tcp"])
def transport_kind(request: pytest.FixtureRequest) -> str:
    """The peer transport (``PeerRingConfig.transport``) of a test that runs over each one.

    A test asking for it runs twice, over real gRPC and over the TCP transport: the
    behaviour it checks is the same whichever carries the frames.
    """
    return str(request.param)


@pytest.fixture
async def loop_clock() -> FakeClock:
    """The fake clock that drives the running loop (``fake_time`` tests only)."""
    return current_clock()


# -- the transport harness -----------------------------------------------------------------------

#: The transport classes by ``PeerRingConfig.transport`` name (the ``transport_kind`` fixture).
TRANSPORTS: dict[str, type[GrpcTransport] | type[TcpTransport]] = {
    "grpc": GrpcTransport,
    "tcp": TcpTransport,
}

#: Upper bound of one wait on a harness node (real seconds). Only reached on a bug.
HARNESS_LIMIT = 15.0

#: Small limits so reconnect tests run fast.
FAST_LIMITS = TransportLimits(backoff_initial=0.02, backoff_max=0.2, connect_timeout=2.0)


def echo_handler(sender: str, request: Request) -> Response:
    """Answers every request with its own payload."""
    return Response(Status.OK, request.payload)


async def no_transfer(sender: str, request: TransferRequest) -> AsyncIterator[list[bytes]]:
    """A transfer handler that has nothing to export."""
    raise UnknownCommandError("no transfers here")
    yield []  # pragma: no cover - makes this an async generator


class TransportNode:
    """A started transport plus the reachability changes it reported."""

    def __init__(self, transport: Transport) -> None:
        self.transport: Any = transport  # Any: tests read each implementation's stats
        self.reachability: list[tuple[str, bool]] = []
        self.changed = asyncio.Event()
        transport.add_reachability_listener(self._on_reachability)

    @property
    def address(self) -> str:
        return str(self.transport.address)

    def _on_reachability(self, peer: str, reachable: bool) -> None:
        self.reachability.append((peer, reachable))
        self.changed.set()

    async def wait_reachability(self, peer: str, reachable: bool) -> None:
        async def until() -> None:
            while (peer, reachable) not in self.reachability:
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(until(), HARNESS_LIMIT)

    def request(
        self, peer: str | TransportNode, payload: bytes = b"", **fields: Any
    ) -> asyncio.Future[Response]:
        target = peer.address if isinstance(peer, TransportNode) else peer
        fields.setdefault("timeout", 5.0)
        future: asyncio.Future[Response] = self.transport.request(
            target, Request("test", "echo", payload=payload, **fields)
        )
        return future


@pytest.fixture
def transport_class(transport_kind: str) -> type[GrpcTransport] | type[TcpTransport]:
    """The transport class of ``transport_kind``, for a test that makes one itself."""
    return TRANSPORTS[transport_kind]


@pytest.fixture
async def nodes(transport_kind: str) -> AsyncIterator[Callable[..., Awaitable[TransportNode]]]:
    """Factory of started transports of ``transport_kind``; all are closed after the test.

    ``await nodes(host="127.0.0.1", port=None, handler=echo, transfer=no_transfer, **kwargs)``
    (``kwargs`` go to the transport; ``limits`` defaults to small backoffs). A module about
    one transport only overrides ``transport_kind`` with a fixture of its own.
    """
    made: list[Any] = []

    async def make(
        host: str = "127.0.0.1",
        *,
        port: int | None = None,
        handler: Callable[[str, Request], Response | Awaitable[Response]] = echo_handler,
        transfer: Callable[[str, TransferRequest], AsyncIterator[list[bytes]]] = no_transfer,
        **kwargs: Any,
    ) -> TransportNode:
        kwargs.setdefault("limits", FAST_LIMITS)
        transport = TRANSPORTS[transport_kind](f"{host}:{port or free_port(host)}", **kwargs)
        made.append(transport)
        node = TransportNode(transport)
        await transport.start(handler, transfer)
        return node

    yield make
    await asyncio.gather(*(t.close() for t in made))


async def one_record(sender: str, request: TransferRequest) -> AsyncIterator[list[bytes]]:
    """A transfer handler that exports one record, ``b"record"``."""
    yield [b"record"]


@pytest.fixture
async def transports(transport_kind: str) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """Factory of bare started transports (echo handler, one exported record); all closed after.

    ``await transports(host="127.0.0.1", port=None, kind=None, **kwargs)``: ``kind`` (a
    transport class) defaults to the one of ``transport_kind``; ``kwargs`` go to the
    transport, ``limits`` defaulting to small backoffs.
    """
    made: list[Any] = []

    async def make(
        host: str = "127.0.0.1", port: int | None = None, kind: Any = None, **kwargs: Any
    ) -> Any:
        kwargs.setdefault("limits", FAST_LIMITS)
        kind = kind or TRANSPORTS[transport_kind]
        transport = kind(f"{host}:{port or free_port(host)}", **kwargs)
        made.append(transport)
        await transport.start(echo_handler, one_record)
        return transport

    yield make
    await asyncio.gather(*(t.close() for t in made))


# -- nodes running a test's own application --------------------------------------------------


def memory_config(partitions: int, replication: int) -> PeerRingConfig:
    """The settings of the in-memory application tests: requests time out after 1 s,
    probes every 0.5 s, suspicion after 2 s, never marked down, no periodic anti-entropy."""
    return PeerRingConfig(
        partitions=partitions,
        replication=replication,
        request_timeout=1.0,
        probe_interval=0.5,
        probe_timeout=0.5,
        suspicion_timeout=2.0,
        down_after=None,
        anti_entropy_interval=None,
    )


@pytest.fixture(name="memory_config")
def memory_config_fixture() -> Callable[[int, int], PeerRingConfig]:
    """``memory_config(partitions, replication)``: :func:`memory_config`."""
    return memory_config


def count_requests(node: PeerRing) -> Counter[str]:
    """Count the requests ``node`` sends per peer (wraps its transport's ``request``)."""
    sent = Counter[str]()
    transport = node.transport
    original = transport.request

    def counting(peer: str, request: object) -> asyncio.Future[object]:
        sent[peer] += 1
        return original(peer, request)  # type: ignore[arg-type, return-value]

    transport.request = counting  # type: ignore[method-assign, assignment]
    return sent


@pytest.fixture(name="count_requests")
def count_requests_fixture() -> Callable[[PeerRing], Counter[str]]:
    """``count_requests(node)``: a counter of the requests ``node`` sends from now on, per
    peer (its transport's ``request`` wrapped)."""
    return count_requests


App = TypeVar("App")


class AppCluster(Generic[App]):
    """Nodes of one test, each with its own application and the same commands registered.

    Every node gets an application ``app(node)`` and, for each ``command: handler`` of
    ``handlers``, ``handler`` bound to that application (``{PUT: App.put}`` registers
    ``app.put``) under ``namespace``; with ``hooks`` the application is the node's data
    hooks too. The nodes share one in-memory network and fake clock (the clock moves only
    in :meth:`until`, on the default loop, or on its own on a ``fake_time`` loop), or, made
    with ``memory=False``, talk over the real transport of ``config`` on real time.

    Attributes:
        config: the nodes' configuration.
        clock: the fake clock (``None`` on real time).
        network: the in-memory network (``None`` over real transports).
        nodes: the latest node made at each address.
        apps: each address's application (of its latest node).
        discoveries: each address's discovery (``set_members`` to change the cluster).
    """

    def __init__(
        self,
        config: PeerRingConfig,
        app: Callable[[PeerRing], App],
        handlers: Mapping[Command, Callable[..., Any]],
        *,
        namespace: str,
        hooks: bool,
        clock: FakeClock | None,
        network: MemoryNetwork | None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.network = network
        self.nodes: dict[str, PeerRing] = {}
        self.apps: dict[str, App] = {}
        self.discoveries: dict[str, FixedDiscovery] = {}
        self._app = app
        self._handlers = dict(handlers)
        self._namespace = namespace
        self._hooks = hooks
        self._made: list[PeerRing] = []

    def add(
        self, address: str, peers: Sequence[str] = (), discovery: FixedDiscovery | None = None
    ) -> PeerRing:
        """A node at ``address`` (not started) whose discovery lists ``peers``, or
        ``discovery``; it replaces an earlier node at that address (a restart)."""
        discovery = discovery or FixedDiscovery(address, list(peers))
        transport = self.network.transport(address) if self.network is not None else None
        node = PeerRing(discovery, config=self.config, transport=transport, clock=self.clock)
        app = self._app(node)
        for command, handler in self._handlers.items():
            node.register(self._namespace, command, types.MethodType(handler, app))
        if self._hooks:
            # hooks=True: the caller's application implements DataHooks (App is unbound).
            node.register_hooks(self._namespace, cast(DataHooks, app))
        self.nodes[address] = node
        self.apps[address] = app
        self.discoveries[address] = discovery
        self._made.append(node)
        return node

    async def start(
        self, address: str, peers: Sequence[str] = (), discovery: FixedDiscovery | None = None
    ) -> PeerRing:
        """:meth:`add` a node and start it."""
        node = self.add(address, peers, discovery)
        await node.start()
        return node

    async def start_ready(self, addresses: Sequence[str]) -> list[PeerRing]:
        """Start one node per address, all listing ``addresses``; wait until all are ready."""
        nodes = [await self.start(address, addresses) for address in addresses]
        await self.until(lambda: all(n.ready for n in nodes))
        return nodes

    async def until(self, predicate: Callable[[], bool], within: float = 60.0) -> None:
        """Advance the fake clock by 0.1 s (running the loop in between) until ``predicate``
        holds; fail after ``within`` seconds of fake time (default loop only)."""
        clock = self.clock
        assert clock is not None, "until() needs the fake clock"
        waited = 0.0
        while True:
            await settle_loop(60)
            if predicate():
                return
            assert waited < within, f"condition not met within {within}s of fake time"
            await clock.advance_async(0.1, settle=60)
            waited += 0.1

    @staticmethod
    def count_requests(node: PeerRing) -> Counter[str]:
        """:func:`count_requests`."""
        return count_requests(node)

    async def stop_all(self) -> None:
        """Stop every node made, and any a test put in :attr:`nodes` itself (stopping is
        idempotent; a node never started is skipped)."""
        others = [n for n in self.nodes.values() if all(n is not m for m in self._made)]
        for node in self._made + others:
            await node.stop()


@pytest.fixture
async def app_cluster() -> AsyncIterator[Callable[..., AppCluster[Any]]]:
    """Factory of :class:`AppCluster`; every node of every cluster made is stopped after.

    ``app_cluster(config, app, handlers, *, namespace="t", hooks=False, clock=None,
    memory=True)``: ``app(node)`` makes a node's application, ``handlers`` maps each
    :class:`~peer_ring.core.Command` to register to the application's function handling it
    (``{PUT: App.put}``). In memory the nodes share a ``MemoryNetwork`` on ``clock`` (a
    fresh ``FakeClock`` by default, or a ``fake_time`` test's ``clock``); ``memory=False``
    gives them the real transports of ``config`` and real time.
    """
    made: list[AppCluster[Any]] = []

    def make(
        config: PeerRingConfig,
        app: Callable[[PeerRing], Any],
        handlers: Mapping[Command, Callable[..., Any]],
        *,
        namespace: str = "t",
        hooks: bool = False,
        clock: FakeClock | None = None,
        memory: bool = True,
    ) -> AppCluster[Any]:
        if memory:
            clock = clock or FakeClock()
            network: MemoryNetwork | None = MemoryNetwork(clock)
        else:
            assert clock is None, "real transports run on real time"
            network = None
        cluster = AppCluster(
            config,
            app,
            handlers,
            namespace=namespace,
            hooks=hooks,
            clock=clock,
            network=network,
        )
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        await cluster.stop_all()


class ManualClock:
    """A fake clock whose timers the test fires by hand (``callbacks``, asked for with
    ``delays``): a wake-up as late as the test likes, or a little early, as asyncio runs a
    timer due within its clock resolution. Its time is ``fake``'s (a :class:`FakeClock`)."""

    def __init__(self) -> None:
        self.fake = FakeClock()
        self.monotonic = self.fake.monotonic
        self.time = self.fake.time
        self.sleep = self.fake.sleep
        self.callbacks: list[Callable[[], object]] = []
        self.delays: list[float] = []

    def call_later(self, delay: float, callback: Callable[[], object]) -> _NoTimer:
        self.callbacks.append(callback)
        self.delays.append(delay)
        return _NoTimer()


class _NoTimer:
    def cancel(self) -> None:
        pass


class CountingClock(FakeClock):
    """A fake clock counting every ``call_later`` in ``armed``: timers armed, fired or not."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = 0

    def call_later(self, delay: float, callback: Callable[[], object]) -> Any:
        self.armed += 1
        return super().call_later(delay, callback)


@pytest.fixture
def manual_clock() -> ManualClock:
    """A :class:`ManualClock` (the deadline wheel's tests: late and early wake-ups)."""
    return ManualClock()


@pytest.fixture
def counting_clock() -> CountingClock:
    """A :class:`CountingClock` (the deadline wheel's tests: timers armed per wheel)."""
    return CountingClock()


#: Attempts of ``run_example`` when a port of its block was taken meanwhile.
EXAMPLE_PORT_ATTEMPTS = 3


def run_example(path: Path, ports: int, timeout: float = 60.0) -> str:
    """Run the example script ``path`` with a base port (it binds ``ports`` consecutive
    ports from it); its stdout. Fails with the script's stderr when it exits non-zero.

    The ports are free when chosen, but the script binds them only once its interpreter
    has started and imported gRPC (seconds on a loaded machine), and meanwhile another
    process's connections may take one as their local port: an exit whose stderr says
    "address already in use" is retried with a fresh block, up to EXAMPLE_PORT_ATTEMPTS.
    """
    for _ in range(EXAMPLE_PORT_ATTEMPTS):
        out = subprocess.run(
            [sys.executable, str(path), str(free_port_block(ports))],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if out.returncode == 0:
            return out.stdout
        if "address already in use" not in out.stderr.lower():
            break
    raise AssertionError(f"{path.name} exited with {out.returncode}:\n{out.stderr}")


@pytest.fixture(name="run_example")
def run_example_fixture() -> Callable[..., str]:
    """``run_example(path, ports)``: see :func:`run_example`."""
    return run_example


# -- the review tests' 3-node clusters over real transports ----------------------------------

#: Upper bound of one wait in a review cluster (real seconds). Only reached on a bug.
REVIEW_LIMIT = 20.0


class KvStore:
    """A node's key-value data, kept across its restart (as a disk would), and the handlers
    of ``ReviewCluster.PUT`` and ``GET`` over it (``get_later`` answers from a Task)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def put(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        self.data[key] = payload
        return b"ok"

    def get(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        return self.data.get(key, b"")

    async def get_later(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        await asyncio.sleep(0)  # a Task's answer, not one served inline
        return self.data.get(key, b"")


#: ``make(address, peers, store)``: a node, not started, with PUT and GET on ``store``.
MakeNode = Callable[[str, list[str], KvStore], PeerRing]


class ReviewCluster:
    """The review tests' 3-node clusters (R3/Q2, namespace ``"kv"``) over real transports:
    their settings, set-up and the checks several transports share. Every node it started
    is stopped after the test (``review_cluster`` fixture)."""

    PUT = Command("put", mutates=True)
    GET = Command("get", reads=True)
    #: A handler that calls back the coordinator of its request (:meth:`relay_handler`).
    RELAY = Command("relay", mutates=True, hinted=False)
    LIMIT = REVIEW_LIMIT
    Store = KvStore
    LIMITS = TransportLimits(connect_timeout=5.0, backoff_initial=0.02, backoff_max=0.2)

    def __init__(self) -> None:
        self.started: list[PeerRing] = []

    def config(self, transport: str = "grpc") -> PeerRingConfig:
        """64 partitions, R3/Q2, requests of 2 s, no periodic anti-entropy."""
        return PeerRingConfig(
            partitions=64,
            replication=3,
            quorum=2,
            request_timeout=2.0,
            transport=transport,
            transport_limits=self.LIMITS,
            anti_entropy_interval=None,
        )

    async def bounded(self, aw: Awaitable[Any]) -> Any:
        return await asyncio.wait_for(aw, self.LIMIT)

    async def start(self, nodes: Sequence[PeerRing]) -> None:
        """Start ``nodes``, wait until each is ready, and connect every pair."""
        for node in nodes:
            self.started.append(node)
            await node.start()
        await self.bounded(asyncio.gather(*(n.wait_ready(self.LIMIT) for n in nodes)))
        await self.connect_all(nodes)

    async def connect_all(self, nodes: Sequence[PeerRing]) -> None:
        """Open every node's connections to the others first: these tests check calls on
        connections, not connection set-up on a loaded machine (up to 20 real attempts each)."""
        for node in nodes:
            transport: Any = node.transport  # both real transports have connect()
            for peer in node.members:
                if peer == node.address:
                    continue
                for attempt in range(20):
                    try:
                        await self.bounded(transport.connect(peer))
                        break
                    except PeerUnavailableError:
                        if attempt == 19:
                            raise

    async def read_back(self, node: PeerRing, key: bytes) -> list[bytes]:
        """The payloads of a quorum read of ``key``, retried (a failed read loses nothing)."""
        for attempt in range(10):
            try:
                return (await node.execute("kv", self.GET, key, b"", timeout=5.0)).payloads
            except QuorumNotReachedError:
                if attempt == 9:
                    raise
                await asyncio.sleep(0.1)
        raise AssertionError("unreachable")

    def addresses(self) -> list[str]:
        """Three free loopback addresses."""
        return [f"127.0.0.1:{free_port()}" for _ in range(3)]

    async def acknowledged_writes_survive_a_restart(
        self, make: MakeNode, peers: list[str] | None = None
    ) -> None:
        """3 nodes from ``make`` (on ``peers``, default :meth:`addresses`), writers on every
        node while the second is stopped and restarted (its data kept): every acknowledged
        write is on at least 2 nodes, and a sample of them is read back through the public
        API afterwards."""
        peers = peers or self.addresses()
        stores = {p: KvStore() for p in peers}
        nodes = {p: make(p, peers, stores[p]) for p in peers}
        acked: dict[bytes, bytes] = {}
        failed = 0
        await self.start(list(nodes.values()))
        victim = peers[1]
        stop = asyncio.Event()

        async def writer(w: int) -> None:
            nonlocal failed
            for i in range(100_000):  # bounded: stop ends it long before
                if stop.is_set():
                    return
                node = nodes[peers[(w + i) % 3]]
                if node.address == victim and not node.ready:
                    await asyncio.sleep(0.005)
                    continue
                key, value = b"w%d-%d" % (w, i), b"v%d-%d" % (w, i)
                try:
                    await node.execute("kv", self.PUT, key, value, timeout=2.0)
                except Exception:
                    failed += 1  # not acknowledged: nothing promised
                else:
                    acked[key] = value

        writers = [asyncio.ensure_future(writer(w)) for w in range(6)]
        try:
            await asyncio.sleep(0.5)  # writes before the stop (a duration, not a sync point)
            await nodes[victim].stop()
            await asyncio.sleep(1.0)  # writes while it is down
            nodes[victim] = make(victim, peers, stores[victim])
            self.started.append(nodes[victim])
            await nodes[victim].start()
            await self.bounded(nodes[victim].wait_ready(self.LIMIT))
            await asyncio.sleep(1.0)  # writes after its restart
        finally:
            stop.set()
            await self.bounded(asyncio.gather(*writers))
        assert len(acked) > 100, (len(acked), failed)
        for key, value in acked.items():
            holders = sum(store.data.get(key) == value for store in stores.values())
            assert holders >= 2, (key, holders)
        for n, (key, value) in enumerate(sorted(acked.items())):
            if n % 10:
                continue  # a sample read back through the public API
            payloads = await self.read_back(nodes[peers[n % 3]], key)
            assert value in payloads, (key, payloads)

    def relay_handler(self, node: PeerRing) -> Callable[..., Awaitable[bytes]]:
        """A RELAY handler for ``node``: a replica asks the coordinator back (``node.call``
        of GET) and answers ``payload|<the coordinator's value>``."""

        async def relay(ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
            if ctx.local:
                return payload
            back = await node.call(ctx.source, "kv", self.GET, key, b"", timeout=3.0)
            return payload + b"|" + back

        return relay

    async def relay_from_every_node(self, nodes: Sequence[PeerRing], rounds: int) -> None:
        """``rounds`` RELAY executes (quorum 3) from every node at once, the key ``b"k"``
        holding ``at-<address>`` on each node: each replica's answer carries the value of
        the coordinator that asked it (its call-back reached the right node); any call-back
        that waited for its 3 s deadline fails its execute."""

        async def one(node: PeerRing, i: int) -> None:
            result = await node.execute("kv", self.RELAY, b"k", b"%d" % i, quorum=3, timeout=10.0)
            assert len(result.ok_replies) == 3
            for reply in result.ok_replies:
                if reply.node != node.address:
                    assert reply.payload == b"%d|at-%s" % (i, node.address.encode())

        await self.bounded(asyncio.gather(*(one(n, i) for n in nodes for i in range(rounds))))

    async def stop_all(self) -> None:
        for node in self.started:
            await node.stop()


@pytest.fixture
async def review_cluster() -> AsyncIterator[ReviewCluster]:
    """A :class:`ReviewCluster`; every node it started is stopped after the test."""
    cluster = ReviewCluster()
    yield cluster
    await cluster.stop_all()


# -- a hand-driven TCP-transport peer ---------------------------------------------------------

#: ``script(reader, writer)`` of a :func:`raw_tcp_peer` connection, after its HELLO was read.
RawScript = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def raw_tcp_peer() -> AsyncIterator[Callable[[RawScript], Awaitable[str]]]:
    """``await raw_tcp_peer(script)``: the address of a hand-driven TCP-transport peer on
    loopback. Each connection's preamble and HELLO are read, then ``script(reader,
    writer)`` runs (it answers the HELLO itself, or not); the socket is aborted after it.
    The servers are closed and the scripts still running cancelled after the test."""
    servers: list[asyncio.Server] = []
    tasks: list[asyncio.Task[Any]] = []

    async def serve(script: RawScript) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            tasks.append(task)
            try:
                await reader.readexactly(len(PREAMBLE))
                (length,) = struct.unpack(">I", await reader.readexactly(4))
                await reader.readexactly(length)  # the HELLO
                await script(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.transport.abort()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return f"127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield serve
    for server in servers:
        server.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for server in servers:
        await server.wait_closed()
