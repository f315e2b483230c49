"""The transport contract between the coordinator and the network.

Two implementations: :class:`peer_ring.core.transport.GrpcTransport` (real gRPC, one
bidirectional stream per peer with coalesced frames) and
:class:`peer_ring.core.testing.MemoryTransport` (in-process, deterministic).

Hot-path rule: ``request`` is a plain function returning a future, so that sending an
operation to N replicas creates no asyncio Task. Inbound handlers may be plain functions
(run inline by the reader, no Task) or coroutine functions (one Task per request).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from peer_ring.core._types import Request, Response, TransferRequest

#: Called for each inbound request with the sender's address. May return the response
#: directly (run inline, preferred for in-memory work) or an awaitable of it.
InboundHandler = Callable[[str, Request], "Response | Awaitable[Response]"]

#: Called for each inbound bulk transfer with the sender's address; yields chunks of
#: records (each chunk a list of opaque record bytes).
TransferHandler = Callable[[str, TransferRequest], AsyncIterator[list[bytes]]]

#: Called when the transport learns that a peer became reachable (True) or not (False).
ReachabilityListener = Callable[[str, bool], None]


@dataclass(frozen=True, slots=True)
class TransportLimits:
    """Resource bounds of a transport; every limit produces a clear error when hit.

    Attributes:
        max_message_bytes: largest frame sent or accepted. A single request or response
            larger than this fails with ``MessageTooLargeError`` (the stream stays up).
        max_in_flight_per_peer: requests sent to one peer and not yet answered. More
            requests wait in the peer's queue (backpressure) ...
        max_queued_per_peer: ... up to this many; beyond it ``request`` fails at once
            with ``OverloadedError``.
        connect_timeout: seconds to wait for a peer's stream to open.
        backoff_initial / backoff_max: reconnect delays after a broken stream (doubling,
            with jitter).
        default_timeout: deadline in seconds of a request whose ``timeout`` is 0.
        keepalive_time / keepalive_timeout: a transport pings an idle connection every
            ``keepalive_time`` seconds and drops it when the ping is not answered within
            ``keepalive_timeout``, so a peer that vanished without closing its sockets
            (power loss, network partition, SIGSTOP) is detected in bounded time.
    """

    max_message_bytes: int = 16 * 1024 * 1024
    max_in_flight_per_peer: int = 4096
    max_queued_per_peer: int = 65536
    connect_timeout: float = 5.0
    backoff_initial: float = 0.05
    backoff_max: float = 2.0
    default_timeout: float = 5.0
    keepalive_time: float = 10.0
    keepalive_timeout: float = 5.0


class Transport(ABC):
    """Moves requests, responses and bulk transfers between nodes.

    Contract:
    - ``start`` binds the local address and begins accepting peers; from then on every
      inbound request is passed to ``on_request`` and every inbound transfer to
      ``on_transfer``. Handler exceptions become ``Status.ERROR`` responses; they never
      break the stream.
    - ``request`` never raises for network problems: the returned future fails with
      ``PeerUnavailableError``, ``RequestTimeoutError`` (after ``request.timeout``
      seconds), ``MessageTooLargeError`` or ``OverloadedError``. A non-OK ``Response``
      status is *not* an exception at this layer; the coordinator maps it.
    - Cancelling the returned future abandons the request (the late answer is dropped,
      the in-flight slot is released).
    - Responses are matched to requests by id per stream; ordering between different
      requests is not guaranteed.
    """

    @property
    @abstractmethod
    def address(self) -> str:
        """The local ``host:port`` peers use to reach this node."""

    @abstractmethod
    async def start(self, on_request: InboundHandler, on_transfer: TransferHandler) -> None:
        """Start listening. Raises ``OSError`` when the address cannot be bound."""

    @abstractmethod
    def request(self, peer: str, request: Request) -> asyncio.Future[Response]:
        """Send ``request`` to ``peer``; the future resolves with its response."""

    @abstractmethod
    def transfer(
        self, peer: str, request: TransferRequest, timeout: float
    ) -> AsyncIterator[list[bytes]]:
        """Stream the records ``peer`` exports for ``request`` (chunks of records).

        Raises ``PeerUnavailableError`` / ``RequestTimeoutError`` from iteration.
        ``timeout`` bounds the wait for each chunk, not the whole transfer.
        """

    @abstractmethod
    def add_reachability_listener(self, listener: ReachabilityListener) -> None:
        """Register a callback for peers becoming (un)reachable."""

    @abstractmethod
    def forget_peer(self, peer: str) -> None:
        """Close the connection to a peer that left the cluster; fail its pending requests."""

    @abstractmethod
    async def close(self) -> None:
        """Stop accepting, fail pending requests with ``NotRunningError``, close streams."""
