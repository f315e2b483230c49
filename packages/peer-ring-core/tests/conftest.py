"""Core test configuration: the fake-time event loop for tests marked ``fake_time``, and the
transport harness (``transport_kind``, ``nodes``) shared by the gRPC and TCP transport tests, and
the in-memory cluster (``harness``) of the data-movement tests.

A test (or module, with ``pytestmark``) marked ``@pytest.mark.fake_time`` runs on a
:class:`~peer_ring.core.testing.FakeClockEventLoop`: the loop's time is a fresh
:class:`~peer_ring.core.testing.FakeClock` (the ``loop_clock`` fixture), and whenever no
task can run the clock jumps to the next timer. Timeouts, suspicion and backoff of
minutes then take milliseconds, and never depend on the machine's speed. Other tests run
on the default asyncio loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import pytest

from peer_ring.core._errors import UnknownCommandError
from peer_ring.core._types import Request, Response, Status, TransferRequest
from peer_ring.core.testing import (
    FakeClock,
    FakeClockEventLoop,
    MemoryCluster,
    MemoryNetwork,
    current_clock,
    fake_time_config,
    free_port,
)
from peer_ring.core.transport import GrpcTransport, TcpTransport, Transport, TransportLimits


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
