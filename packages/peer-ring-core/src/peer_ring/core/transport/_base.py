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
from functools import partial
from typing import Protocol

from peer_ring.core._errors import InvalidArgumentError
from peer_ring.core._types import Request, Response, TransferRequest

#: Called for each inbound request with the sender's address. May return the response
#: directly (run inline, preferred for in-memory work) or an awaitable of it.
InboundHandler = Callable[[str, Request], "Response | Awaitable[Response]"]

#: The fields form of an inbound handler: ``dispatch(source, namespace, command, key,
#: payload, partition, hint, timeout, inbound=True)``. An :data:`InboundHandler` object with
#: a ``dispatch`` method of this shape (the node's dispatcher) is called through it by the
#: TCP and gRPC transports' readers, which then build no :class:`Request` per message; its
#: answer may also be the success's payload as plain ``bytes`` (no :class:`Response`).
FieldsDispatch = Callable[
    [str, str, str, bytes, bytes, int, str, float, bool],
    "bytes | Response | Awaitable[Response]",
]


class CallOwner(Protocol):
    """Who is told of a submitted request's outcome (see :meth:`Transport.submit`)."""

    def answered(self, target: str, hint: str, payload: bytes) -> None:
        """``target`` answered the request sent for ``hint`` with a success."""
        ...

    def on_response(self, target: str, hint: str, response: Response) -> None:
        """``target`` answered the request sent for ``hint`` with an error status."""
        ...

    def on_done(self, target: str, hint: str, fut: asyncio.Future[Response]) -> None:
        """The request's future is done: failed, cancelled, or answered (when the
        transport has no direct path: then ``fut.result()`` is the response)."""
        ...


#: Called for each inbound bulk transfer with the sender's address; yields chunks of
#: records (each chunk a list of opaque record bytes).
TransferHandler = Callable[[str, TransferRequest], AsyncIterator[list[bytes]]]

#: Called when the transport learns that a peer became reachable (True) or not (False).
ReachabilityListener = Callable[[str, bool], None]


@dataclass(frozen=True, slots=True)
class TransportLimits:
    """Resource bounds of a transport; every limit produces a clear error when hit.

    The first group bounds what this node *sends*; the second (from
    ``max_inbound_streams`` on) bounds what it *accepts* from the network: a peer that
    breaks those is refused with a clear gRPC status, and the refusal is counted in
    ``GrpcTransport.stats()``. ``check()`` validates every value.

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
            (power loss, network partition, SIGSTOP) is detected in bounded time. The
            server also *enforces* the interval: a client that pings without data more
            often than every ``keepalive_time / 2`` seconds gets GOAWAY ``too_many_pings``
            after two such pings (every node of a cluster should share these settings).
        max_inbound_streams: Exchange streams this node serves at once (one per peer in a
            healthy cluster, briefly two during a reconnect). Beyond it a new stream is
            refused with RESOURCE_EXHAUSTED (``refused_overload``).
        max_inbound_transfers: Transfer calls served at once, same refusal.
        max_concurrent_streams: HTTP/2 streams one client connection may open at once
            (gRPC's ``grpc.max_concurrent_streams``); further calls queue in the client.
        max_inbound_pending_bytes: response bytes of one inbound stream that wait to be
            written. A client that sends requests but does not read the answers fills
            this; the node then stops *reading* that stream (HTTP/2 flow control then
            stops the client's writes) until the client reads again. Backpressure, not an
            error: the stream stays up and other peers are unaffected.
        max_inbound_pending_requests: requests of one inbound stream whose (asynchronous)
            handler is still running; beyond it the node stops reading the stream, as above.
        max_request_timeout: longest deadline in seconds an inbound request gets. Its
            ``timeout_ms`` is clamped to this (and 0, "unspecified", becomes
            ``default_timeout``); an asynchronous handler still running at the deadline is
            cancelled and answered with ``TIMEOUT``. Senders give up earlier anyway, so
            this only reclaims work a misbehaving peer left behind.
        handshake_timeout: seconds a new connection has to complete its TLS and HTTP/2
            handshakes before the server drops it (idle sockets of a connection flood).
        max_connection_idle: seconds after which the server closes a client connection
            that carries no call at all (GOAWAY); peers always hold their Exchange stream
            open, so only clients that connect and do nothing are affected. ``None``
            disables it.
        max_connection_age: when set, seconds after which the server asks a client to
            reconnect (GOAWAY, then ``max_connection_age_grace`` for calls in progress). It
            bounds how long a connection outlives a certificate rotation, at the price of a
            periodic reconnect of every Exchange stream; ``None`` (default) disables it.
        max_connection_age_grace: see ``max_connection_age``.
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
    max_inbound_streams: int = 256
    max_inbound_transfers: int = 64
    max_concurrent_streams: int = 128
    max_inbound_pending_bytes: int = 32 * 1024 * 1024
    max_inbound_pending_requests: int = 8192
    max_request_timeout: float = 300.0
    handshake_timeout: float = 10.0
    max_connection_idle: float | None = 600.0
    max_connection_age: float | None = None
    max_connection_age_grace: float = 30.0

    def check(self) -> None:
        """Raise :class:`InvalidArgumentError` when a limit cannot work.

        Raises:
            InvalidArgumentError: a limit is out of range (the message names it).
        """
        if self.max_message_bytes < 64:
            raise InvalidArgumentError("max_message_bytes must be at least 64")
        for name in (
            "max_in_flight_per_peer",
            "max_inbound_streams",
            "max_inbound_transfers",
            "max_concurrent_streams",
            "max_inbound_pending_bytes",
            "max_inbound_pending_requests",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"{name} must be an integer >= 1, got {value!r}")
        if self.max_queued_per_peer < 0:
            raise InvalidArgumentError(
                f"max_queued_per_peer must be >= 0, got {self.max_queued_per_peer!r}"
            )
        for name in (
            "connect_timeout",
            "default_timeout",
            "keepalive_time",
            "keepalive_timeout",
            "max_request_timeout",
            "handshake_timeout",
            "max_connection_age_grace",
        ):
            value = getattr(self, name)
            if not value > 0:  # also refuses NaN
                raise InvalidArgumentError(f"{name} must be > 0, got {value!r}")
        for name in ("max_connection_idle", "max_connection_age"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise InvalidArgumentError(f"{name} must be > 0 or None, got {value!r}")


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

    def submit(
        self,
        peer: str,
        owner: CallOwner,
        hint: str,
        namespace: str,
        command: str,
        key: bytes,
        payload: bytes,
        partition: int,
        timeout: float,
    ) -> None:
        """Send a request given by its fields; its outcome goes to ``owner``.

        A success reaches ``owner.answered(peer, hint, payload)``, an error status
        ``owner.on_response(peer, hint, response)`` (both from the reader, at once, where
        the transport can; see ``OutboundCall``); a failure, a cancellation, or any outcome
        on a transport without that direct path reaches ``owner.on_done(peer, hint, fut)``
        from the loop. Never raises. The gRPC and TCP transports override this with a path
        that builds no :class:`Request` (``PeerBook.submit``); this default sends one
        through :meth:`request`.
        """
        # Imported here: _outbound imports this module.
        from peer_ring.core.transport._outbound import OutboundCall

        fut = self.request(
            peer, Request(namespace, command, key, payload, partition, hint, timeout)
        )
        if type(fut) is OutboundCall and not fut.done():
            # The gRPC transport's call: its reader tells the owner directly.
            fut.owner = owner
            fut.hint = hint
        else:
            fut.add_done_callback(partial(owner.on_done, peer, hint))

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
