"""The TCP implementation of :class:`~peer_ring.core.transport.Transport`.

Length-prefixed messages over ``asyncio.Protocol`` (wire: :mod:`._tcp_wire`), carrying the
same ``peer_ring.v1.Frame`` bytes as the gRPC transport (:mod:`._codec`). What it shares
with the gRPC transport, unchanged: the coalescing single writer, the reader, the
shared deadline wheel, cancellation, bounded in-flight + queue with ``OverloadedError``,
reconnect with backoff (:mod:`._outbound`), and the inbound side with its backpressure,
deadline clamping and error handling (:mod:`._inbound`).

Connections: each node dials its own connection to each peer for *its* requests and
accepts the peer's connection for the peer's requests (two TCP connections per pair,
one per direction of requests). That needs no tie-break when both sides dial at once,
and a connection's reader and writer each have one job.

Admission of an inbound connection, in order: the preamble (protocol version and
transport kind: a gRPC or wrong-version peer is refused with a reason that says so), the
HELLO (malformed: refused), the token (constant-time compare, UNAUTHENTICATED), the
sender (with mutual TLS: against the client certificate's SANs, :mod:`._identity`), then
``max_inbound_streams`` / ``max_inbound_transfers``. Every refusal and every malformed or
oversized message is counted in :meth:`TcpTransport.stats` and logged at WARNING,
rate-limited per kind; the connection is closed, the node keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import random
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf.message import DecodeError

from peer_ring.core._clock import Clock, SystemClock
from peer_ring.core._errors import (
    InvalidArgumentError,
    NotRunningError,
    PeerRingError,
    PeerUnavailableError,
    RemoteError,
)
from peer_ring.core._types import TransferRequest
from peer_ring.core.transport._base import (
    InboundHandler,
    ReachabilityListener,
    TransferHandler,
    Transport,
    TransportLimits,
)
from peer_ring.core.transport._codec import (
    decode_transfer_chunk,
    decode_transfer_request,
    encode_transfer_request,
)
from peer_ring.core.transport._deadlines import DeadlineWheel, read_chunk_within
from peer_ring.core.transport._identity import claim_refusal, names_of_peercert
from peer_ring.core.transport._inbound import InboundStream
from peer_ring.core.transport._log import RateLimitedLog
from peer_ring.core.transport._options import EOF
from peer_ring.core.transport._outbound import _ConnectError
from peer_ring.core.transport._peer_book import PeerBook
from peer_ring.core.transport._stats import TransportStats
from peer_ring.core.transport._tcp_accept import Acceptor
from peer_ring.core.transport._tcp_inbound import TcpInboundStream
from peer_ring.core.transport._tcp_outbound import (
    Dialer,
    RefusedError,
    TcpPeerConnection,
    split_address,
    tune_socket,
)
from peer_ring.core.transport._tcp_status import send_chunks, status_error
from peer_ring.core.transport._tcp_tls import ServerContexts, client_context
from peer_ring.core.transport._tcp_wire import (
    ACCEPT,
    CHUNK,
    END,
    HEADROOM,
    HELLO,
    INVALID,
    KIND_EXCHANGE,
    KIND_TRANSFER,
    OK,
    OVERLOADED,
    REFUSE,
    STOPPING,
    TRANSFER_REQ,
    UNAUTHENTICATED,
    FrameProtocol,
    FrameStream,
    ProtocolError,
    decode_hello,
    decode_status,
    encode_status,
)
from peer_ring.core.transport._tls import CertificateFiles, TLSConfig

logger = logging.getLogger(__name__)

#: Seconds between two log lines about the same kind of refused connection.
REFUSAL_LOG_INTERVAL = 10.0


class TcpTransport(PeerBook[TcpPeerConnection], Transport):
    """Transport over plain TCP (or TLS): length-prefixed frames, one connection per peer
    and direction. Same constructor arguments and guarantees as
    :class:`~peer_ring.core.transport.GrpcTransport`, minus the gRPC credential objects.

    Args:
        address: ``host:port`` to listen on (port 0 picks one); also this node's identity.
        limits: resource bounds (message size, in-flight, queue, timeouts, backoff,
            keepalive as kernel TCP keepalive, inbound connection counts).
        token: shared cluster secret; required from every peer when set.
        clock: time source for deadlines, connect timeouts and backoff.
        tls: TLS/mTLS from certificate files, reloaded when they change.
        rng: randomness for backoff jitter.

    Raises:
        InvalidArgumentError: a limit is out of range, the token is not printable ASCII,
            or a TLS file is missing or not PEM.
    """

    _logger = logger

    def __init__(
        self,
        address: str,
        *,
        limits: TransportLimits = TransportLimits(),  # noqa: B008 - frozen, shared safely
        token: str | None = None,
        clock: Clock | None = None,
        tls: TLSConfig | None = None,
        rng: random.Random | None = None,
    ) -> None:
        limits.check()
        token = token or None
        if token is not None and not (token.isascii() and token.isprintable()):
            raise InvalidArgumentError("token must be printable ASCII")
        try:
            split_address(address)
        except ValueError:
            raise InvalidArgumentError(f"not a host:port address: {address!r}") from None
        self._address = address
        self._limits = limits
        self._token = token
        self._expected_token = token.encode() if token else None
        self._clock: Clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._stats = TransportStats()
        self._tls = tls
        self._tls_files: CertificateFiles | None = None
        self._server_ssl: ServerContexts | None = None
        if tls is not None:
            self._tls_files = CertificateFiles(tls, self._stats)
            self._server_ssl = ServerContexts(self._tls_files, tls)
        self._refusal_log = RateLimitedLog(logger, self._clock, REFUSAL_LOG_INTERVAL)
        self._wheel = DeadlineWheel(self._clock)
        self._peers: dict[str, TcpPeerConnection] = {}
        self._inbound: set[InboundStream] = set()
        self._connections: set[FrameProtocol] = set()
        self._serving: set[asyncio.Task[None]] = set()
        self._transfers_in_progress = 0
        self._listeners: list[ReachabilityListener] = []
        self._server: asyncio.Server | None = None
        self._acceptor: Acceptor | None = None
        self._on_request: InboundHandler | None = None
        self._on_transfer: TransferHandler | None = None
        self._running = False
        self._closed = False
        self._closing: set[asyncio.Task[None]] = set()
        self._dialer = self._make_dialer()

    def _make_dialer(self) -> Dialer:
        files = self._tls_files
        return Dialer(
            self._address,
            self._token,
            self._limits,
            self._clock,
            (lambda: client_context(files)) if files is not None else None,
            self._tls.server_name if self._tls is not None else None,
        )

    # -- Transport API -----------------------------------------------------------------------

    @property
    def address(self) -> str:
        """The local ``host:port`` peers use to reach this node."""
        return self._address

    @property
    def limits(self) -> TransportLimits:
        """The resource bounds this transport enforces."""
        return self._limits

    async def start(self, on_request: InboundHandler, on_transfer: TransferHandler) -> None:
        """Bind the address and serve peers.

        Raises:
            OSError: the address cannot be bound.
            NotRunningError: the transport was already closed.
        """
        if self._closed:
            raise NotRunningError(f"transport {self._address} is closed; create a new one")
        if self._running:
            return
        self._on_request = on_request
        self._on_transfer = on_transfer
        host, port = split_address(self._address)
        max_body = self._limits.max_message_bytes + HEADROOM
        loop = asyncio.get_running_loop()
        self._acceptor = Acceptor(max_body, self._on_connection)
        self._server = await loop.create_server(
            self._acceptor.protocol,
            host,
            port,
            ssl=self._server_ssl.root if self._server_ssl is not None else None,
            ssl_handshake_timeout=self._limits.handshake_timeout if self._server_ssl else None,
            reuse_address=True,
            backlog=1024,
        )
        if port == 0:
            bound = self._server.sockets[0].getsockname()[1]
            self._address = f"{self._address.rpartition(':')[0]}:{bound}"
            self._dialer.sender = self._address
        self._running = True
        logger.info("peer-ring TCP transport listening on %s", self._address)

    async def transfer(
        self, peer: str, request: TransferRequest, timeout: float
    ) -> AsyncIterator[list[bytes]]:
        """Stream the records ``peer`` exports for ``request`` over a connection of its own.

        Raises (from iteration) the same errors as the gRPC transport's ``transfer``.
        """
        if not self._running:
            raise self._not_running()
        try:
            proto = await self._dialer.dial(peer, KIND_TRANSFER)
        except RefusedError as exc:
            raise status_error(exc.code, f"transfer from {peer}: {exc}", peer) from None
        except _ConnectError as exc:
            raise PeerUnavailableError(peer, str(exc)) from None
        self._stats.transfers_received += 1
        try:
            await proto.send(TRANSFER_REQ, encode_transfer_request(request))
            while True:
                item = await read_chunk_within(proto.read(), self._clock, timeout, peer, request)
                if item is EOF:
                    if not self._running:  # close() ended it, as on the gRPC transport
                        raise self._not_running()
                    raise PeerUnavailableError(peer, "connection closed during a transfer")
                assert isinstance(item, tuple)
                kind, body = item
                if kind == CHUNK:
                    try:
                        records = decode_transfer_chunk(body)
                    except DecodeError as exc:
                        self._stats.malformed_frames += 1
                        raise RemoteError(f"malformed transfer chunk from {peer}: {exc}") from None
                    if records:
                        yield records
                elif kind == END:
                    code, reason = decode_status(body)
                    if code == OK:
                        return
                    raise status_error(code, f"transfer from {peer}: {reason}", peer)
                else:
                    raise RemoteError(f"unexpected message type {kind} in a transfer from {peer}")
        except PeerRingError:
            raise  # RequestTimeoutError is also a TimeoutError, an OSError
        except (ProtocolError, OSError) as exc:
            if not self._running:
                raise self._not_running() from None
            raise PeerUnavailableError(peer, f"transfer broke: {exc}") from None
        finally:
            proto.abort()

    async def close(self) -> None:
        """Stop serving and close every connection; pending requests fail with
        ``NotRunningError``. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._running = False
        peers = list(self._peers.values())
        self._peers.clear()
        for conn in peers:
            conn.shutdown(self._not_running)
        if self._server is not None and self._acceptor is not None:
            self._acceptor.stop_accepting(self._server)
        for stream in list(self._inbound):
            stream.close()
        for proto in list(self._connections):
            proto.abort()
        for task in list(self._serving):
            task.cancel()
        if self._server is not None and self._acceptor is not None:
            # Connections asyncio accepted before stop_accepting arrive and are aborted.
            await self._acceptor.close(self._server)
        await asyncio.gather(
            *(conn.aclose() for conn in peers),
            *self._closing,
            *self._serving,
            return_exceptions=True,
        )
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
        self._wheel.close()
        logger.info("peer-ring TCP transport %s closed", self._address)

    # -- extras --------------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Counters since start (same meaning as ``GrpcTransport.stats()``)."""
        if self._server_ssl is not None:
            self._stats.tls_handshakes = self._server_ssl.handshakes
        return self._stats.as_dict()

    # -- internals -----------------------------------------------------------------------------

    def _connection(self, peer: str) -> TcpPeerConnection:
        conn = self._peers.get(peer)
        if conn is None:
            conn = TcpPeerConnection(
                peer,
                self._dialer,
                metadata=(),
                limits=self._limits,
                clock=self._clock,
                rng=self._rng,
                wheel=self._wheel,
                stats=self._stats,
                on_reachability=self._notify,
            )
            self._peers[peer] = conn
        return conn

    def _on_connection(self, proto: FrameProtocol) -> None:
        if not self._running:
            proto.abort()
            return
        assert proto.transport is not None
        tune_socket(proto.transport.get_extra_info("socket"), self._limits)
        self._connections.add(proto)
        task = asyncio.get_running_loop().create_task(self._serve(proto))
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)

    async def _serve(self, proto: FrameProtocol) -> None:
        try:
            await self._serve_connection(proto)
        except asyncio.CancelledError:
            pass  # the client went away mid-transfer, or the transport closes
        except (ProtocolError, OSError) as exc:
            self._note_bad_input(proto, exc)
        except Exception:
            logger.exception("serving a connection from %s failed", proto.peername)
        finally:
            self._connections.discard(proto)
            proto.abort()

    def _note_bad_input(self, proto: FrameProtocol, exc: BaseException) -> None:
        if isinstance(exc, ProtocolError):
            self._stats.malformed_frames += 1
            self._refusal_log.warning(
                "malformed", "closed the connection from %s: %s", proto.peername, exc
            )
        else:
            logger.debug("connection from %s failed: %r", proto.peername, exc)

    async def _refuse(self, proto: FrameProtocol, code: int, kind: str, reason: str) -> None:
        if code == OVERLOADED:
            self._stats.refused_overload += 1
        elif code != STOPPING:
            self._stats.refused_connections += 1
        self._refusal_log.warning(
            ("refused", kind), "refused a connection from %s: %s", proto.peername, reason
        )
        with contextlib.suppress(OSError):
            await proto.send(REFUSE, encode_status(code, reason))
        proto.close()

    async def _hello(self, proto: FrameProtocol) -> Any:
        """The first message, within ``handshake_timeout`` (None: the peer gave up)."""
        timer = self._clock.call_later(self._limits.handshake_timeout, proto.abort)
        try:
            return await proto.read()
        finally:
            timer.cancel()

    async def _serve_connection(self, proto: FrameProtocol) -> None:
        item = await self._hello(proto)
        if item is EOF:
            return
        assert isinstance(item, tuple)
        kind, body = item
        if kind != HELLO:
            raise ProtocolError(f"expected HELLO, got message type {kind}")
        conn_kind, sender, token = decode_hello(body)
        # Constant-time comparison, so a refusal's timing tells nothing about the token.
        if self._expected_token is not None and not hmac.compare_digest(
            token, self._expected_token
        ):
            what = "wrong" if token else "missing"
            await self._refuse(
                proto, UNAUTHENTICATED, what, f"{what} cluster token (sender {sender!r})"
            )
            return
        if not sender:
            await self._refuse(proto, INVALID, "sender", "no sender address in HELLO")
            return
        if self._tls is not None and self._tls.require_client_auth and proto.transport:
            ssl_object = proto.transport.get_extra_info("ssl_object")
            names = names_of_peercert(ssl_object.getpeercert() if ssl_object else None)
            if (why := claim_refusal(sender, names, self._tls.server_name)) is not None:
                await self._refuse(proto, UNAUTHENTICATED, "identity", f"peer identity: {why}")
                return
        if not self._running or self._on_request is None or self._on_transfer is None:
            await self._refuse(proto, STOPPING, "stopping", "node is stopping")
            return
        if conn_kind == KIND_EXCHANGE:
            await self._serve_exchange(proto, sender)
        elif conn_kind == KIND_TRANSFER:
            await self._serve_transfer(proto, sender)
        else:
            await self._refuse(proto, INVALID, "kind", f"unknown connection kind {conn_kind}")

    async def _serve_exchange(self, proto: FrameProtocol, sender: str) -> None:
        assert self._on_request is not None
        # The peer just reached us: cut our own reconnect backoff to it short.
        conn = self._peers.get(sender)
        if conn is not None:
            conn.retry_now()
        limit = self._limits.max_inbound_streams
        if len(self._inbound) >= limit:
            await self._refuse(
                proto,
                OVERLOADED,
                "overload",
                f"overloaded: node {self._address} serves max_inbound_streams={limit} "
                "connections already; retry later",
            )
            return
        stream = TcpInboundStream(
            sender,
            FrameStream(proto, proto.peername),
            self._on_request,
            self._limits,
            self._stats,
            self._wheel,
            self._refusal_log,
        )
        self._inbound.add(stream)
        try:
            await proto.send(ACCEPT)
            self._stats.inbound_streams += 1
            await stream.run()
        finally:
            self._inbound.discard(stream)
        error = proto._error
        if isinstance(error, ProtocolError):
            self._note_bad_input(proto, error)

    async def _serve_transfer(self, proto: FrameProtocol, sender: str) -> None:
        limit = self._limits.max_inbound_transfers
        if self._transfers_in_progress >= limit:
            await self._refuse(
                proto,
                OVERLOADED,
                "overload",
                f"overloaded: node {self._address} serves max_inbound_transfers={limit} "
                "transfers already; retry later",
            )
            return
        self._transfers_in_progress += 1
        # A client that goes away stops the export (the gRPC transport cancels the RPC).
        task = asyncio.current_task()

        def stop_export() -> None:
            if task is not None:
                task.cancel()

        proto.on_lost = stop_export
        try:
            await proto.send(ACCEPT)
            item = await self._hello(proto)
            if item is EOF:
                return
            assert isinstance(item, tuple)
            kind, body = item
            if kind != TRANSFER_REQ:
                raise ProtocolError(f"expected TRANSFER_REQ, got message type {kind}")
            try:
                request = decode_transfer_request(body)
            except DecodeError as exc:
                raise ProtocolError(f"malformed transfer request: {exc}") from None
            code, reason = await self._send_chunks(proto, sender, request)
            await proto.send(END, encode_status(code, reason))
            proto.close()
        finally:
            proto.on_lost = None
            self._transfers_in_progress -= 1

    async def _send_chunks(
        self, proto: FrameProtocol, sender: str, request: TransferRequest
    ) -> tuple[int, str]:
        assert self._on_transfer is not None
        self._stats.transfers_sent += 1
        chunks = self._on_transfer(sender, request)
        return await send_chunks(proto, chunks, self._limits.max_message_bytes, sender, request)
