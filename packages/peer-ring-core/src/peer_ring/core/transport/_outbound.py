"""The outbound side of a peer link: this node's Exchange stream to one peer.

A :class:`PeerConnection` owns one gRPC channel and, at any time, at most one Exchange
stream to its peer. It carries this node's requests to the peer and the peer's responses
back. Its life:

``CONNECTING`` (first attempt; requests queue) -> ``UP`` (requests flow) -> on a broken
stream ``DOWN`` (pending requests fail, new ones fail fast with ``PeerUnavailableError``;
reconnect attempts with exponential backoff and jitter run in the background) -> ``UP``
again ... -> ``CLOSED`` (the peer was forgotten or the transport closed).

Per stream, exactly one *writer* task writes (grpc.aio allows one pending write per
stream): it sleeps until something is queued, then joins everything queued into one
frame, writes it, and repeats, so requests made while a write is in progress coalesce
into the next frame. One *reader* task matches responses to requests by id. There is no
task per request: :meth:`PeerConnection.request` returns an :class:`OutboundCall` (a
future) and the request's deadline lives in a shared :class:`DeadlineWheel`.

The connection is one object in three files, one concept each: the requests and their
deadlines (:mod:`._outbound_calls`, base class :class:`~._outbound_calls.CallBook`), the
writer and its hold (:mod:`._outbound_writer`, :class:`~._outbound_writer.FrameWriter`),
and here the connection's states, the stream's life and its reader. Base classes rather
than helper objects: a request pays no extra call or attribute hop for the split.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable, Sequence

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from peer_ring.core._clock import Clock
from peer_ring.core._errors import PeerUnavailableError
from peer_ring.core._types import Response, Status
from peer_ring.core.proto import peer_ring_pb2 as pb
from peer_ring.core.transport._base import TransportLimits
from peer_ring.core.transport._codec import STATUSES
from peer_ring.core.transport._deadlines import DeadlineGroup, DeadlineWheel
from peer_ring.core.transport._options import ACCEPTED_KEY, EOF, EXCHANGE_PATH
from peer_ring.core.transport._outbound_calls import (
    MAX_TIMEOUT,
    ErrorFactory,
    OutboundCall,
    _State,
)
from peer_ring.core.transport._outbound_writer import FrameWriter
from peer_ring.core.transport._stats import TransportStats

# Re-exported: the transports, _base and tests import these from here.
__all__ = [
    "MAX_TIMEOUT",
    "OLD_CHANNEL_GRACE",
    "ErrorFactory",
    "Metadata",
    "OutboundCall",
    "PeerConnection",
]

logger = logging.getLogger(__name__)

#: Seconds a replaced channel (after a certificate rotation) lets its calls in progress
#: (a bulk transfer) finish before it is closed.
OLD_CHANNEL_GRACE = 30.0

# Weight of a new round-trip sample in the per-peer latency moving average (metrics).
_LATENCY_WEIGHT = 0.2

#: ``(key, value)`` pairs sent as call metadata.
Metadata = tuple[tuple[str, str], ...]


class _ConnectError(Exception):
    """An attempt to open the Exchange stream failed (the message says why)."""


class PeerConnection(FrameWriter):
    """This node's link to one peer: channel, Exchange stream, pending requests.

    Args:
        peer: the peer's ``host:port``.
        channel: the gRPC channel to the peer (owned: closed by :meth:`aclose`).
        metadata: call metadata identifying this node (sender, token).
        limits: resource bounds.
        clock: time source for connect timeouts and backoff.
        rng: jitter source.
        wheel: where request deadlines are kept (shared by the transport).
        stats: the transport's counters.
        on_reachability: called with ``(peer, reachable)`` on every change.
        renew_channel: called before every reconnect attempt with ``force``; returns a new
            channel to use instead (TLS files changed since the current one was built, or
            ``force``: the peer was seen alive, see :meth:`retry_now`) or ``None``.
    """

    def __init__(
        self,
        peer: str,
        channel: grpc.aio.Channel,
        *,
        metadata: Metadata,
        limits: TransportLimits,
        clock: Clock,
        rng: random.Random,
        wheel: DeadlineWheel,
        stats: TransportStats,
        on_reachability: Callable[[str, bool], None],
        renew_channel: Callable[[bool], grpc.aio.Channel | None] | None = None,
        hold: float = 0.0,
    ) -> None:
        self.peer = peer
        self.channel = channel
        self._renew_channel = renew_channel
        # Channels replaced after a certificate rotation, each closing with a grace period.
        self._old_channels: dict[asyncio.Task[None], grpc.aio.Channel] = {}
        self._metadata = metadata
        self._limits = limits
        self._clock = clock
        self._rng = rng
        self._wheel = wheel
        # Deadlines by group (see DeadlineGroup): the group requests join while their tick
        # is its tick; a sentinel (tick 0, never a real one) when there is none.
        self._monotonic = wheel.monotonic
        self._resolution = wheel.resolution
        self._no_group = DeadlineGroup(self, 0, 0)
        self._group = self._no_group
        self._stats = stats
        self._on_reachability = on_reachability
        self._loop = asyncio.get_running_loop()
        self._max_bytes = limits.max_message_bytes
        self._max_in_flight = limits.max_in_flight_per_peer
        # Requests accepted and not yet resolved (queued or sent): in-flight + queued.
        self._capacity = limits.max_in_flight_per_peer + limits.max_queued_per_peer

        self._state = _State.CONNECTING
        self._down_reason = "not connected yet"
        self._closed_error: ErrorFactory = lambda: PeerUnavailableError(peer, "closed")
        self._reachable: bool | None = None
        self._task: asyncio.Task[None] | None = None
        self._stream: grpc.aio.StreamStreamCall[bytes, bytes] | None = None
        self._attempt_waiters: list[asyncio.Future[None]] = []

        # Every unresolved call by id; a call leaves it exactly when its future resolves.
        self._calls: dict[int, OutboundCall] = {}
        # Calls not yet written, in order (may hold already-resolved calls: skipped).
        self._queue: deque[OutboundCall] = deque()
        self._in_flight = 0  # written and unresolved
        self._cancels: list[int] = []  # ids to tell the peer to drop
        self._wakeup = asyncio.Event()  # "the writer has something to do"
        self._writer_idle = False  # the writer waits on _wakeup (a request must set it)
        self._direct_below = 0  # see CallBook: requests never bypass this writer
        self._retry = asyncio.Event()  # "the peer is alive: stop waiting out the backoff"
        self._fresh_channel = False  # the next attempt uses a new channel (retry_now)
        self._next_id = 1
        # gRPC's Nagle-like hold (see _linger.hold): up to ``hold`` seconds, the writer keeps
        # new requests back while the previous frame is unanswered, i.e. while more than
        # _release_at requests are in flight. 0 (TCP): never.
        self._hold = hold
        self._release_at = 0
        self._holding = False
        # Round-trip latency sampled on one request at a time (a clock read per sample, not
        # per request): the call timed, when it was written, the moving average (seconds).
        self._sample: OutboundCall | None = None
        self._sample_at = 0.0
        self.latency: float | None = None

    # -- connection lifecycle --------------------------------------------------------------

    def start(self) -> None:
        """Start connecting (and keep reconnecting) in the background. Idempotent."""
        if self._task is None and self._state is not _State.CLOSED:
            self._task = self._loop.create_task(self._run(), name=f"peer-ring->{self.peer}")

    async def wait_up(self) -> None:
        """Return once the stream is up; raise ``PeerUnavailableError`` if an attempt fails."""
        if self._state is _State.UP:
            return
        if self._state is _State.CLOSED:
            raise self._closed_error()
        self.start()
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._attempt_waiters.append(waiter)
        await waiter

    def _settle_attempt(self, error: BaseException | None) -> None:
        waiters = self._attempt_waiters
        self._attempt_waiters = []
        for waiter in waiters:
            if waiter.done():
                continue
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    def _set_reachable(self, reachable: bool) -> None:
        if self._reachable is reachable or self._state is _State.CLOSED:
            return
        self._reachable = reachable
        self._on_reachability(self.peer, reachable)

    def _backoff(self, attempt: int) -> float:
        # Exponential, capped, with "equal jitter": half fixed, half random, so that nodes
        # that lost the same peer at the same moment do not reconnect in lockstep.
        base = min(self._limits.backoff_max, self._limits.backoff_initial * (1 << min(attempt, 30)))
        return base * (0.5 + 0.5 * self._rng.random())

    async def _run(self) -> None:
        attempt = 0
        first = True
        while self._state is not _State.CLOSED:
            if not first:
                self._maybe_renew_channel(force=self._fresh_channel)
                self._fresh_channel = False
            first = False
            try:
                stream = await self._open()
            except Exception as exc:  # _ConnectError, or anything unexpected from gRPC
                self._stats.connect_failures += 1
                reason = str(exc) if isinstance(exc, _ConnectError) else _describe(exc)
                logger.debug("connecting to %s failed: %s", self.peer, reason)
                self._go_down(reason)
                self._settle_attempt(PeerUnavailableError(self.peer, reason))
                await self._backoff_sleep(self._backoff(attempt))
                attempt += 1
                continue
            up_since = self._clock.monotonic()
            self._stream = stream
            self._state = _State.UP
            self._stats.streams_opened += 1
            logger.debug("stream to %s is up", self.peer)
            self._settle_attempt(None)
            self._set_reachable(True)
            if self._queue:
                self._wakeup.set()
            reason = await self._serve(stream)
            self._stream = None
            if self._state is _State.CLOSED:
                return
            self._stats.stream_failures += 1
            logger.info("stream to %s broke: %s", self.peer, reason)
            self._go_down(reason)
            # A stream that broke soon after opening (a peer that accepts and then fails)
            # keeps the backoff growing; one that lived a while starts over.
            if self._clock.monotonic() - up_since >= self._limits.backoff_max:
                attempt = 0
            await self._backoff_sleep(self._backoff(attempt))
            attempt += 1

    def retry_now(self) -> None:
        """Cut a reconnect backoff short (the peer was just seen alive)."""
        if self._state is not _State.UP and self._state is not _State.CLOSED:
            self._fresh_channel = True
            self._retry.set()

    async def _backoff_sleep(self, delay: float) -> None:
        """Sleep ``delay`` on the clock, or until :meth:`retry_now` is called."""
        self._retry.clear()
        sleeper = asyncio.ensure_future(self._clock.sleep(delay))
        waiter = asyncio.ensure_future(self._retry.wait())
        try:
            await asyncio.wait((sleeper, waiter), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waiter.cancel()

    def renew_idle_channel(self) -> None:
        """Pick up rotated TLS files for a connection whose Exchange stream never started
        (one used only for transfers); a started one renews on its next reconnect."""
        if self._task is None and self._state is not _State.CLOSED:
            self._maybe_renew_channel(force=False)

    def _maybe_renew_channel(self, force: bool) -> None:
        if self._renew_channel is None:
            return
        try:
            channel = self._renew_channel(force)
        except Exception:
            logger.exception("building a new channel to %s failed; keeping the old one", self.peer)
            return
        if channel is None:
            return
        old, self.channel = self.channel, channel
        task = self._loop.create_task(old.close(OLD_CHANNEL_GRACE))
        self._old_channels[task] = old
        task.add_done_callback(lambda done: self._old_channels.pop(done, None))

    def _go_down(self, reason: str) -> None:
        if self._state is _State.CLOSED:
            return
        self._state = _State.DOWN
        self._down_reason = reason
        self._stats.unavailable += self._fail_all(lambda: PeerUnavailableError(self.peer, reason))
        self._set_reachable(False)

    async def _open(self) -> grpc.aio.StreamStreamCall[bytes, bytes]:
        """Open the Exchange stream and wait until the peer accepted it."""
        stream: grpc.aio.StreamStreamCall[bytes, bytes] = self.channel.stream_stream(
            EXCHANGE_PATH, request_serializer=None, response_deserializer=None
        )(None, metadata=self._metadata)
        timed_out = False

        def on_timeout() -> None:
            nonlocal timed_out
            timed_out = True
            stream.cancel()

        timer = self._clock.call_later(self._limits.connect_timeout, on_timeout)
        try:
            initial = await stream.initial_metadata()
        except BaseException:
            stream.cancel()
            raise
        finally:
            timer.cancel()
        if initial is not None and any(key == ACCEPTED_KEY for key, _ in initial):
            return stream
        if timed_out:
            wait = self._limits.connect_timeout
            raise _ConnectError(f"no answer within connect_timeout={wait:g}s")
        code = await stream.code()
        details = await stream.details()
        if code == grpc.StatusCode.UNAUTHENTICATED:
            logger.warning("peer %s refused this node: %s", self.peer, details)
        return_reason = f"{code.name}: {details}" if details else code.name
        raise _ConnectError(return_reason)

    async def _serve(self, stream: grpc.aio.StreamStreamCall[bytes, bytes]) -> str:
        """Run the reader and the writer until the stream breaks; return why it did."""
        reader = self._loop.create_task(self._read_loop(stream))
        writer = self._loop.create_task(self._write_loop(stream))
        try:
            await asyncio.wait((reader, writer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            reader.cancel()
            writer.cancel()
            stream.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)
        for task in (reader, writer):
            if task.cancelled():
                continue
            exc = task.exception()
            if exc is None:
                if task is reader:
                    return reader.result()
                continue
            return _describe(exc)
        return "stream ended"

    # -- the stream's reader and writer ----------------------------------------------------
    async def _read_loop(self, stream: grpc.aio.StreamStreamCall[bytes, bytes]) -> str:
        stats = self._stats
        while True:
            data = await stream.read()
            if data is EOF:
                return "stream closed by peer"
            assert isinstance(data, bytes)
            try:
                frame = pb.Frame.FromString(data)
            except DecodeError as exc:
                stats.malformed_frames += 1
                return f"malformed frame from peer: {exc}"
            stats.frames_received += 1
            responses = frame.responses
            if responses:
                self._on_responses(responses)

    def _on_responses(self, responses: Sequence[pb.Response]) -> None:
        calls = self._calls
        remove = self._wheel.remove
        statuses = STATUSES
        known = len(statuses)
        peer = self.peer
        freed = 0
        for msg in responses:
            rid = msg.id
            call = calls.get(rid)
            if call is None or not call.sent:
                continue  # answered, timed out or cancelled already (or a bogus id)
            del calls[rid]
            group = call.group  # _release, inline
            group.pending -= 1
            if not group.pending and group is not self._group:
                remove(group, group.tick)
            freed += 1
            status = msg.status
            owner = call.owner
            if owner is None:
                call.set_result(
                    Response(
                        statuses[status] if 0 <= status < known else Status.ERROR,  # status_of
                        msg.payload,
                        msg.error,
                    )
                )
                continue
            # The owner's call stays unresolved: nobody else holds it (see OutboundCall).
            call.owner = None
            try:
                if status == 0:
                    owner.answered(peer, call.hint, msg.payload)
                else:
                    owner.on_response(
                        peer,
                        call.hint,
                        Response(
                            statuses[status] if 0 <= status < known else Status.ERROR,
                            msg.payload,
                            msg.error,
                        ),
                    )
            except Exception:
                # As the loop does for a failing done-callback: this reader and the
                # other answers of the frame must not suffer from it.
                logger.exception("the owner of a request to %s failed on its answer", peer)
        self._in_flight -= freed
        if self._holding and self._in_flight <= self._release_at:
            self._wakeup.set()  # the previous frame is answered: the held requests go out
        sample = self._sample
        if sample is not None and sample.rid not in calls:  # answered (else _forget clears it)
            self._sample = None
            rtt = self._loop.time() - self._sample_at
            old = self.latency
            self.latency = rtt if old is None else old + (rtt - old) * _LATENCY_WEIGHT
        self._stats.responses_received += len(responses)
        self._stats.late_responses += len(responses) - freed
        if freed and self._queue and self._writer_idle:
            self._writer_idle = False
            self._wakeup.set()

    # -- shutdown ----------------------------------------------------------------------------

    def shutdown(self, make_error: ErrorFactory) -> None:
        """Stop for good: fail every pending request with ``make_error()``; stop the task.

        The channel is closed by :meth:`aclose`.
        """
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        self._closed_error = make_error
        self._fail_all(make_error)
        self._settle_attempt(make_error())
        if self._stream is not None:
            self._stream.cancel()
        if self._task is not None:
            self._task.cancel()

    async def aclose(self) -> None:
        """Wait for the connection task to end and close the channel."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        await self.channel.close(None)
        # The transport is going away: no more grace for calls on replaced channels.
        old = dict(self._old_channels)
        for task in old:
            task.cancel()
        await asyncio.gather(*old, return_exceptions=True)
        for channel in old.values():
            await channel.close(None)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        details = exc.details()
        return f"{exc.code().name}: {details}" if details else exc.code().name
    return f"{type(exc).__name__}: {exc}"
