"""The gRPC implementation of :class:`~peer_ring.core.transport.Transport`.

Wire protocol: ``peer_ring/core/proto/peer_ring.proto``. Moving parts:

- a ``grpc.aio`` server on this node's address serves the ``Exchange`` streams peers open
  to us (:mod:`._inbound`) and the ``Transfer`` RPC (:mod:`._grpc_transfer`);
- one :class:`~._outbound.PeerConnection` per peer holds the channel and this node's
  ``Exchange`` stream to it (:mod:`._outbound`);
- one :class:`~._deadlines.DeadlineWheel` holds every request deadline (outbound requests
  and inbound handlers alike);
- optional TLS/mTLS from certificate files reloaded at run time (:mod:`._tls`), and an
  optional shared token checked on every call.

Admission of an inbound call, in order: the token (UNAUTHENTICATED), the sender metadata
(INVALID_ARGUMENT), with mutual TLS the sender against the client certificate's SANs
(PERMISSION_DENIED, :mod:`._identity`), then the capacity bounds ``max_inbound_streams`` /
``max_inbound_transfers`` (RESOURCE_EXHAUSTED). Each refusal is counted in :meth:`stats` and
logged at WARNING, at most once per ``REFUSAL_LOG_INTERVAL`` per kind of refusal, so that a
client hammering the port cannot flood the logs.

Both RPCs are registered with *raw bytes* (no gRPC-level serializers): frames are built from
pre-serialized parts (see :mod:`._codec`) and parsed by our reader, which also lets a
malformed frame be refused cleanly instead of failing inside gRPC.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from peer_ring.core._clock import Clock, SystemClock
from peer_ring.core._errors import (
    InvalidArgumentError,
    NotRunningError,
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
from peer_ring.core.transport._channels import open_channel
from peer_ring.core.transport._codec import (
    decode_transfer_chunk,
    encode_transfer_request,
)
from peer_ring.core.transport._deadlines import DeadlineWheel, read_chunk_within
from peer_ring.core.transport._grpc_admission import Admission
from peer_ring.core.transport._grpc_errors import (
    abort,
    bind_error,
    transfer_error,
)
from peer_ring.core.transport._grpc_shared import (
    SharedCounters,
    SharedInboundStream,
    SharedPeerConnection,
    shared_frames_instance,
)
from peer_ring.core.transport._grpc_transfer import serve_transfer
from peer_ring.core.transport._inbound import InboundStream
from peer_ring.core.transport._linger import HOLD_SECONDS
from peer_ring.core.transport._log import RateLimitedLog
from peer_ring.core.transport._options import (
    ACCEPTED_KEY,
    AUTHORIZATION_KEY,
    EOF,
    EXCHANGE_METHOD,
    SENDER_KEY,
    SERVICE,
    SHARED_FRAMES_KEY,
    TRANSFER_METHOD,
    TRANSFER_PATH,
    server_options,
)
from peer_ring.core.transport._outbound import Metadata, PeerConnection
from peer_ring.core.transport._peer_book import PeerBook
from peer_ring.core.transport._stats import TransportStats, peer_figures
from peer_ring.core.transport._tls import (
    CertificateFiles,
    ClientCredentials,
    TLSConfig,
    server_credentials,
)

logger = logging.getLogger(__name__)

#: Seconds ``close()`` lets in-progress RPCs (transfers) finish before cancelling them.
CLOSE_GRACE = 0.5

#: Initial metadata of an accepted Exchange, without and with shared frames.
ACCEPTED: Metadata = ((ACCEPTED_KEY, "1"),)

#: Seconds between two log lines about the same kind of refused call (all are counted).
REFUSAL_LOG_INTERVAL = 10.0


class GrpcTransport(Admission, PeerBook[PeerConnection], Transport):
    """Transport over gRPC (grpc.aio): one multiplexed, coalescing stream per peer.

    Args:
        address: ``host:port`` to listen on; it is also this node's identity, sent to peers.
            Port 0 picks a free port (``address`` then reports the real one after ``start``).
        limits: resource bounds (message size, in-flight, queue, timeouts, backoff).
        token: shared cluster secret (printable ASCII). When set, it is sent to peers and
            required from them (``authorization: Bearer <token>``); a stream without it is
            refused with UNAUTHENTICATED. ``None`` or ``""`` disables the check. Use TLS when
            the network is not trusted: the token is sent as is.
        clock: source of time for deadlines, connect timeouts and backoff.
        server_credentials: ``grpc.ServerCredentials`` for TLS/mTLS on the listener
            (``grpc.ssl_server_credentials(...)``, or dynamic credentials for reloading).
        channel_credentials: ``grpc.ChannelCredentials`` for TLS/mTLS to peers.
        tls: TLS/mTLS from certificate files that are reloaded when they change (the
            usual way; see :class:`~peer_ring.core.transport.TLSConfig`). Exclusive with
            ``server_credentials`` / ``channel_credentials``, which are fixed for the
            transport's life.
        rng: randomness for backoff jitter (seed it for reproducible runs).
        hold: cap, in seconds, of the wait of new requests to a peer while the previous
            frame to it is unanswered (Nagle-like coalescing, see :mod:`._linger`); the cap
            stretches to 1.5 times the peer's measured round trip when that is longer, at
            most 20 ms (or ``hold`` if longer). A request to a peer with nothing or a single
            request in flight is never held. 0 sends each frame at once.
        shared_frames: offer and accept *shared frames* (see :mod:`._grpc_shared`): this
            node's answers to a peer ride on its own Exchange stream to that peer, in the
            frames of its requests, instead of a stream of their own (about half the frames
            under symmetric load). Negotiated per stream by call metadata; with a peer that
            does not offer or accept them (an older version, or ``False``), both directions
            keep the two-stream behaviour.

    Raises:
        InvalidArgumentError: a limit or ``hold`` is out of range, the token is not
            printable ASCII, ``tls`` is combined with explicit credentials, or a TLS file
            is missing or not PEM.
    """

    _logger = logger

    def __init__(
        self,
        address: str,
        *,
        limits: TransportLimits = TransportLimits(),  # noqa: B008 - frozen, shared safely
        token: str | None = None,
        clock: Clock | None = None,
        server_credentials: grpc.ServerCredentials | None = None,
        channel_credentials: grpc.ChannelCredentials | None = None,
        tls: TLSConfig | None = None,
        rng: random.Random | None = None,
        hold: float = HOLD_SECONDS,
        shared_frames: bool = True,
    ) -> None:
        limits.check()
        if not 0.0 <= hold <= 1.0:  # NaN fails too
            raise InvalidArgumentError(f"hold must be between 0 and 1 second, got {hold!r}")
        if tls is not None and (server_credentials is not None or channel_credentials is not None):
            raise InvalidArgumentError(
                "give either tls or server_credentials/channel_credentials, not both"
            )
        token = token or None  # an empty token (e.g. from an unset env var) means none
        if token is not None and not (token.isascii() and token.isprintable()):
            # gRPC metadata values must be printable ASCII; fail here, not on every call.
            raise InvalidArgumentError("token must be printable ASCII")
        self._address = address
        self._limits = limits
        self._clock: Clock = clock or SystemClock()
        self._server_credentials = server_credentials
        self._channel_credentials = channel_credentials
        self._rng = rng or random.Random()
        self._hold = hold
        self._shared_frames = shared_frames
        self._shared_counters = SharedCounters()
        # Request ids of a new connection to a peer start above those of every connection
        # forgotten before (answers to them may still arrive on the peer's stream).
        self._id_floor = 1
        # This transport's instance id, sent with the shared-frames offer and echo: a peer
        # hands answers only to a stream that reaches the instance that asked (a node
        # restarted at the same address numbers its requests afresh).
        self._instance = secrets.token_hex(8)
        self._expected_auth = f"Bearer {token}".encode() if token else None
        self._token = token
        self._stats = TransportStats()
        self._tls = tls
        self._tls_files: CertificateFiles | None = None
        self._client_tls: ClientCredentials | None = None
        if tls is not None:
            self._tls_files = CertificateFiles(tls, self._stats)
            self._client_tls = ClientCredentials(self._tls_files)
        self._refusal_log = RateLimitedLog(logger, self._clock, REFUSAL_LOG_INTERVAL)
        self._transfers_in_progress = 0
        self._wheel = DeadlineWheel(self._clock)
        self._peers: dict[str, PeerConnection] = {}
        self._inbound: set[InboundStream] = set()
        self._listeners: list[ReachabilityListener] = []
        self._server: grpc.aio.Server | None = None
        self._on_request: InboundHandler | None = None
        self._on_transfer: TransferHandler | None = None
        self._running = False
        self._closed = False
        self._closing: set[asyncio.Task[None]] = set()
        self._metadata = self._build_metadata()

    def _exchange_metadata(self) -> Metadata:
        """The Exchange stream's call metadata: the sender, the token, the offers."""
        if self._shared_frames:
            return (*self._metadata, (SHARED_FRAMES_KEY, self._instance))
        return self._metadata

    def _build_metadata(self) -> Metadata:
        if self._token:
            return ((SENDER_KEY, self._address), (AUTHORIZATION_KEY, f"Bearer {self._token}"))
        return ((SENDER_KEY, self._address),)

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
            OSError: the address cannot be bound (in use, not local, malformed).
            NotRunningError: the transport was already closed (transports are single-use).
        """
        if self._closed:
            raise NotRunningError(f"transport {self._address} is closed; create a new one")
        if self._running:
            return
        self._on_request = on_request
        self._on_transfer = on_transfer
        server = grpc.aio.server(options=server_options(self._limits))
        credentials = self._server_credentials
        if self._tls_files is not None:
            credentials = server_credentials(self._tls_files, self._stats)
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVICE,
                    {
                        # No serializers: handlers get and return raw bytes.
                        EXCHANGE_METHOD: grpc.stream_stream_rpc_method_handler(
                            self._serve_exchange
                        ),
                        TRANSFER_METHOD: grpc.unary_stream_rpc_method_handler(self._serve_transfer),
                    },
                ),
            )
        )
        try:
            if credentials is not None:
                port = server.add_secure_port(self._address, credentials)
            else:
                port = server.add_insecure_port(self._address)
        except RuntimeError as exc:
            await server.stop(None)
            raise bind_error(self._address, str(exc)) from exc
        if port == 0:
            await server.stop(None)
            raise bind_error(self._address, "gRPC could not bind")
        host, _, wanted = self._address.rpartition(":")
        if wanted == "0":
            self._address = f"{host}:{port}"
            self._metadata = self._build_metadata()
        await server.start()
        self._server = server
        self._running = True
        logger.info("peer-ring transport listening on %s", self._address)

    async def transfer(
        self,
        peer: str,
        request: TransferRequest,
        timeout: float,
    ) -> AsyncIterator[list[bytes]]:
        """Stream the records ``peer`` exports for ``request``, chunk by chunk.

        ``timeout`` bounds the wait for each chunk. Raises (from iteration)
        ``PeerUnavailableError``, ``RequestTimeoutError``, ``MessageTooLargeError`` (a record
        over the size limit), ``UnknownCommandError``/``InvalidArgumentError`` (refused by
        the peer's handler), ``RemoteError`` (the peer's export failed).
        """
        if not self._running:
            raise self._not_running()
        conn = self._connection(peer)
        conn.renew_idle_channel()
        call: grpc.aio.UnaryStreamCall[bytes, bytes] = conn.channel.unary_stream(
            TRANSFER_PATH, request_serializer=None, response_deserializer=None
        )(encode_transfer_request(request), metadata=self._metadata)
        self._stats.transfers_received += 1
        try:
            while True:
                read = call.read()
                data: Any = await read_chunk_within(read, self._clock, timeout, peer, request)
                if data is EOF:
                    return
                try:
                    records = decode_transfer_chunk(data)
                except DecodeError as exc:
                    self._stats.malformed_frames += 1
                    raise RemoteError(f"malformed transfer chunk from {peer}: {exc}") from None
                if records:
                    yield records
        except grpc.aio.AioRpcError as exc:
            if not self._running:
                raise self._not_running() from None
            raise transfer_error(peer, exc) from None
        except asyncio.CancelledError:
            # close() cancels the call and grpc raises CancelledError from its read: that is
            # not a cancellation of the caller's task, so it gets NotRunningError (as on TCP).
            task = asyncio.current_task()
            if not self._running and (task is None or task.cancelling() == 0):
                raise self._not_running() from None
            raise
        finally:
            call.cancel()

    def _forgetting(self, conn: PeerConnection) -> None:
        # Answers to the forgotten link's requests may still arrive on the peer's stream:
        # a new link to it numbers its requests above them.
        if isinstance(conn, SharedPeerConnection):
            self._id_floor = max(self._id_floor, conn.next_id)

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
        # Ending our inbound streams first lets their RPCs finish at once, so the server's
        # grace period only waits for transfers in progress.
        for stream in list(self._inbound):
            stream.close()
        if self._server is not None:
            await self._server.stop(CLOSE_GRACE)
        await asyncio.gather(
            *(conn.aclose() for conn in peers), *self._closing, return_exceptions=True
        )
        self._wheel.close()
        logger.info("peer-ring transport %s closed", self._address)

    # -- extras --------------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Counters since start (frames, requests, responses, errors, refusals...).

        See :class:`~peer_ring.core.transport._stats.TransportStats` for their meaning, and
        :class:`~peer_ring.core.transport._grpc_shared.SharedCounters` for the shared frames'.
        """
        figures = self._stats.as_dict()
        figures.update(self._shared_counters.as_dict())
        return figures

    def peer_stats(self) -> dict[str, dict[str, float]]:
        """Per peer: ``in_flight``, ``pending``, ``latency_seconds`` (for metrics)."""
        return peer_figures(self._peers)

    # -- internals -----------------------------------------------------------------------------

    def _connection(self, peer: str) -> PeerConnection:
        conn = self._peers.get(peer)
        if conn is None:
            channel, renew = self._channel(peer)
            make: Callable[..., PeerConnection] = PeerConnection
            if self._shared_frames:
                make = partial(
                    SharedPeerConnection, counters=self._shared_counters, first_id=self._id_floor
                )
            conn = make(
                peer,
                channel,
                renew_channel=renew,
                metadata=self._exchange_metadata(),
                limits=self._limits,
                clock=self._clock,
                rng=self._rng,
                wheel=self._wheel,
                stats=self._stats,
                on_reachability=self._notify,
                hold=self._hold,
            )
            self._peers[peer] = conn
        return conn

    def _channel(
        self, peer: str
    ) -> tuple[grpc.aio.Channel, Callable[[bool], grpc.aio.Channel | None]]:
        """A channel to ``peer`` and how to renew it (see :func:`._channels.open_channel`)."""
        return open_channel(
            peer, self._limits, self._channel_credentials, self._client_tls, self._tls
        )

    async def _serve_exchange(
        self, _requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> None:
        admitted = self._admit(context, "Exchange")
        if isinstance(admitted, tuple):
            await abort(context, *admitted)
        assert self._on_request is not None  # checked by _admit
        # The peer just reached us, so it is up: if our own stream to it is waiting out a
        # reconnect backoff (it was down when we last tried, e.g. it started after us),
        # retry now instead of failing its requests fast until the backoff ends.
        conn = self._peers.get(admitted)
        if conn is not None:
            conn.retry_now()
        limit = self._limits.max_inbound_streams
        if len(self._inbound) >= limit:
            await abort(
                context,
                *self._overloaded("Exchange", admitted, context, "max_inbound_streams", limit),
            )
        # Answers in the opener's frames are taken only if it offered shared frames and this
        # node agreed (echoed the offer): see _grpc_shared.
        offered = shared_frames_instance(context.invocation_metadata())
        peer_instance = offered if self._shared_frames else None
        make: Callable[..., InboundStream] = InboundStream
        if self._shared_frames:
            make = partial(
                SharedInboundStream,
                links=self._peers,
                peer_instance=peer_instance,
                max_deferred=self._limits.max_in_flight_per_peer,
            )
        stream = make(
            admitted,
            context,
            self._on_request,
            self._limits,
            self._stats,
            self._wheel,
            self._refusal_log,
        )
        # Registered before the first await, so that concurrent openers count each other.
        self._inbound.add(stream)
        try:
            await context.send_initial_metadata(
                ACCEPTED
                if peer_instance is None
                else (*ACCEPTED, (SHARED_FRAMES_KEY, self._instance))
            )
        except BaseException:
            self._inbound.discard(stream)
            raise
        self._stats.inbound_streams += 1
        try:
            await stream.run()
        finally:
            self._inbound.discard(stream)
        if stream.abort_reason is not None:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, stream.abort_reason)

    async def _serve_transfer(
        self, data: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> None:
        admitted = self._admit(context, "Transfer")
        if isinstance(admitted, tuple):
            await abort(context, *admitted)
        limit = self._limits.max_inbound_transfers
        if self._transfers_in_progress >= limit:
            await abort(
                context,
                *self._overloaded("Transfer", admitted, context, "max_inbound_transfers", limit),
            )
        assert self._on_transfer is not None  # checked by _admit
        self._transfers_in_progress += 1
        try:
            await serve_transfer(
                self._on_transfer,
                admitted,
                data,
                context,
                self._limits.max_message_bytes,
                self._stats,
                self._refusal_log,
            )
        finally:
            self._transfers_in_progress -= 1
