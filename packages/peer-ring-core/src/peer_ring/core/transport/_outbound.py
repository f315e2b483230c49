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
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from peer_ring.core._clock import Clock
from peer_ring.core._errors import (
    InvalidArgumentError,
    MessageTooLargeError,
    OverloadedError,
    PeerUnavailableError,
    RequestTimeoutError,
)
from peer_ring.core._types import Request, Response, Status
from peer_ring.core.proto import peer_ring_pb2 as pb
from peer_ring.core.transport._base import CallOwner, TransportLimits
from peer_ring.core.transport._codec import (
    STATUSES,
    cancel_parts,
    join_frames,
    request_fields_part,
)
from peer_ring.core.transport._deadlines import DeadlineGroup, DeadlineWheel
from peer_ring.core.transport._linger import HOLD_MIN_IN_FLIGHT, hold, linger
from peer_ring.core.transport._options import ACCEPTED_KEY, EOF, EXCHANGE_PATH
from peer_ring.core.transport._stats import TransportStats

logger = logging.getLogger(__name__)

#: Longest request deadline in seconds (about 11.5 days); longer ones, inf included, are cut.
MAX_TIMEOUT = 1_000_000.0

#: Seconds a replaced channel (after a certificate rotation) lets its calls in progress
#: (a bulk transfer) finish before it is closed.
OLD_CHANNEL_GRACE = 30.0

# Weight of a new round-trip sample in the per-peer latency moving average (metrics).
_LATENCY_WEIGHT = 0.2

#: Makes an object without calling its ``__init__`` (a DeadlineGroup per tick change).
_new_object = object.__new__

#: ``(key, value)`` pairs sent as call metadata.
Metadata = tuple[tuple[str, str], ...]
#: Builds the exception a request fails with (a fresh one per future, so tracebacks of
#: different awaiters never pile up on one shared exception object).
ErrorFactory = Callable[[], BaseException]


class _State(enum.Enum):
    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"
    CLOSED = "closed"


# The states read by every request, looked up once (an enum attribute lookup costs about
# 0.1 us).
_UP = _State.UP
_DOWN = _State.DOWN
_CLOSED = _State.CLOSED


class _ConnectError(Exception):
    """An attempt to open the Exchange stream failed (the message says why)."""


class OutboundCall(asyncio.Future[Response]):
    """The future of one request: it *is* the request's bookkeeping entry.

    Subclassing the future (instead of adding a done-callback) lets a cancellation by the
    caller release the in-flight slot at once, at no cost on the normal path.

    A call made by :meth:`PeerConnection.submit` with an *owner* is not resolved on an
    answer: the reader tells the owner directly, in the same loop turn, as
    ``owner.answered(peer, hint, payload)`` for a success and ``owner.on_response(peer,
    hint, response)`` for an error status. That saves the future's result, a done-callback
    and its partial, its scheduling and a loop turn per request, and the ``Response``
    object of every success (the coordinator's operations work this way). A failure or a
    cancellation resolves the call and is delivered through the loop, as a done-callback
    would be, as ``owner.on_done(peer, hint, call)``. A caller may also set :attr:`owner`
    and :attr:`hint` on a call of :meth:`PeerConnection.request` that is not done yet
    (``Transport.submit``'s default does).
    """

    # Set by PeerConnection.submit right after construction: no Python __init__, which
    # would cost an extra call per request.
    __slots__ = (
        "_conn",
        "command",
        "data",
        "group",
        "hint",
        "namespace",
        "owner",
        "rid",
        "sent",
        "timeout",
    )
    _conn: PeerConnection
    rid: int
    namespace: str
    command: str
    data: bytes  # the encoded Frame part, until written
    timeout: float
    sent: bool
    group: DeadlineGroup  # its deadline (see DeadlineGroup)
    owner: CallOwner | None
    hint: str

    def cancel(self, msg: Any | None = None) -> bool:
        """Abandon the request: the slot is freed and the peer told to stop working on it."""
        if not super().cancel(msg):
            return False
        self._conn.abandon(self)
        self._conn.failed(self)
        return True


class PeerConnection:
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

    # -- requests ------------------------------------------------------------------------

    def request(self, req: Request) -> asyncio.Future[Response]:
        """Queue ``req``; the returned future resolves with the peer's response."""
        return self.submit(
            None,
            req.hint,
            req.namespace,
            req.command,
            req.key,
            req.payload,
            req.partition,
            req.timeout,
        )

    def submit(
        self,
        owner: CallOwner | None,
        hint: str,
        namespace: str,
        command: str,
        key: bytes,
        payload: bytes,
        partition: int,
        timeout: float,
    ) -> asyncio.Future[Response]:
        """Queue a request given by its fields (no :class:`Request` object); ``hint`` is
        the request's hint, handed back to the owner with the outcome.

        With an ``owner``, the outcome goes to it (see :class:`OutboundCall`), a refusal
        here (peer down, overloaded, too large) included, through the loop; the returned
        future is then only for the caller's information. Without one, the future
        resolves with the peer's response.
        """
        state = self._state
        if state is _DOWN:
            self._stats.unavailable += 1
            return self._failed(PeerUnavailableError(self.peer, self._down_reason), owner, hint)
        if state is _CLOSED:
            return self._failed(self._closed_error(), owner, hint)
        if self._task is None:
            self.start()
        if len(self._calls) >= self._capacity:
            self._stats.overloaded += 1
            return self._failed(
                OverloadedError(
                    f"{len(self._calls)} requests already pending for peer {self.peer} "
                    f"(max_in_flight_per_peer + max_queued_per_peer = {self._capacity})"
                ),
                owner,
                hint,
            )
        rid = self._next_id
        self._next_id = rid + 1
        if not timeout > 0:  # 0 and NaN too
            timeout = self._limits.default_timeout
        if timeout > MAX_TIMEOUT:
            timeout = MAX_TIMEOUT  # inf would overflow the wire's uint32 milliseconds
        try:
            data = request_fields_part(
                rid, namespace, command, key, payload, partition, hint, timeout
            )
        except (TypeError, ValueError) as exc:
            return self._failed(InvalidArgumentError(f"cannot encode request: {exc}"), owner, hint)
        if len(data) > self._max_bytes:
            self._stats.oversized_requests += 1
            return self._failed(
                MessageTooLargeError(
                    f"request {namespace}/{command} to {self.peer} is {len(data)} "
                    f"bytes, over max_message_bytes={self._max_bytes}"
                ),
                owner,
                hint,
            )
        call = OutboundCall(loop=self._loop)
        call._conn = self
        call.rid = rid
        call.namespace = namespace
        call.command = command
        call.data = data
        call.timeout = timeout
        call.sent = False
        # The deadline: the tick as DeadlineWheel.add computes it (rounded up: never early),
        # in the connection's group of that tick (no wheel call per request).
        tick = int((self._monotonic() + timeout) / self._resolution) + 1
        group = self._group
        if group.tick != tick:
            if not group.pending and group.tick:
                # The previous tick's group, settled in full while it was the current one
                # (it stayed in the wheel for later requests of its tick): it leaves now.
                self._wheel.remove(group, group.tick)
            # DeadlineGroup's __init__ inline (no Python call): a new group per tick change.
            group = self._group = _new_object(DeadlineGroup)
            group.owner = self
            group.tick = tick
            group.first = rid
            group.pending = 0
            self._wheel.add_at(group, tick)
        group.last = rid
        group.pending += 1
        call.group = group
        call.owner = owner
        call.hint = hint
        self._calls[rid] = call
        self._queue.append(call)
        if self._writer_idle and state is _UP and self._in_flight < self._max_in_flight:
            # Only the first request of a frame wakes the writer (Event.set is a Python
            # call); a busy writer looks at the queue before it waits again.
            self._writer_idle = False
            self._wakeup.set()
        return call

    def _failed(
        self, exc: BaseException, owner: CallOwner | None = None, hint: str = ""
    ) -> asyncio.Future[Response]:
        fut: asyncio.Future[Response] = self._loop.create_future()
        fut.set_exception(exc)
        if owner is not None:
            fut.add_done_callback(partial(owner.on_done, self.peer, hint))
        return fut

    def expire_group(self, group: DeadlineGroup) -> None:
        """The deadline wheel reached ``group``'s tick: fail its unanswered requests."""
        if group is self._group:
            self._group = self._no_group
        calls = self._calls
        for rid in range(group.first, group.last + 1):
            call = calls.get(rid)
            if call is not None and call.group is group:
                self._expire_call(call)

    def _release(self, group: DeadlineGroup) -> None:
        """One request of ``group`` is settled; a group settled in full leaves the wheel,
        unless it is the current one (later requests of its tick join it; it leaves when
        the tick changes)."""
        group.pending -= 1
        if not group.pending and group is not self._group:
            self._wheel.remove(group, group.tick)

    def _expire_call(self, call: OutboundCall) -> None:
        """Fail ``call`` with ``RequestTimeoutError`` (its deadline passed)."""
        if call.done():
            return
        self._forget(call)
        self._stats.timeouts += 1
        call.set_exception(
            RequestTimeoutError(
                f"{call.namespace}/{call.command} to {self.peer} got no answer "
                f"within {call.timeout:g}s"
            )
        )
        self.failed(call)

    def failed(self, call: OutboundCall) -> None:
        """Tell ``call``'s owner, if any, of its failure (in a later loop turn, like a
        done-callback: the failing code may be in the middle of something)."""
        owner = call.owner
        if owner is not None:
            call.owner = None
            self._loop.call_soon(owner.on_done, self.peer, call.hint, call)

    def abandon(self, call: OutboundCall) -> None:
        """The caller cancelled ``call``: release its slot, tell the peer."""
        self._forget(call)

    def load(self) -> tuple[int, int]:
        """Requests in flight (written, unanswered) and pending (queued or in flight)."""
        return self._in_flight, len(self._calls)

    def _forget(self, call: OutboundCall) -> None:
        if call is self._sample:
            self._sample = None  # timed out or abandoned: not a round trip
        if self._calls.pop(call.rid, None) is None:
            return
        self._release(call.group)
        if call.sent:
            self._in_flight -= 1
            if self._state is _State.UP:
                # Spare the peer work nobody waits for; it also frees a slot for the queue.
                self._cancels.append(call.rid)
                self._wakeup.set()
        else:
            call.data = b""  # still in the queue until the writer skips it; drop the bytes

    def _fail_all(self, make_error: ErrorFactory) -> int:
        calls = self._calls
        self._calls = {}
        self._queue.clear()
        self._cancels = []
        self._in_flight = 0
        self._release_at = 0
        self._sample = None
        for call in calls.values():
            self._release(call.group)
            call.set_exception(make_error())
            self.failed(call)
        group = self._group
        if not group.pending and group.tick:  # the current group, settled: leaves too
            self._wheel.remove(group, group.tick)
        self._group = self._no_group
        return len(calls)

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

    async def _write_loop(self, stream: grpc.aio.StreamStreamCall[bytes, bytes]) -> None:
        stats = self._stats
        queue = self._queue
        wakeup = self._wakeup
        max_bytes = self._max_bytes
        max_in_flight = self._max_in_flight
        while True:
            if not self._cancels and not (queue and self._in_flight < max_in_flight):
                wakeup.clear()
                self._writer_idle = True
                try:
                    await wakeup.wait()
                finally:
                    self._writer_idle = False
                await linger(lambda: len(queue))
                continue
            if (
                self._hold
                and self._in_flight > self._release_at
                and self._in_flight >= HOLD_MIN_IN_FLIGHT
                and not self._cancels
            ):
                self._holding = True
                try:
                    await hold(wakeup, self._hold)
                finally:
                    self._holding = False
                self._release_at = self._in_flight  # answered or not: the next frame goes out
                await linger(lambda: len(queue))
                continue
            parts: list[bytes] = []
            if self._cancels:
                ids = self._cancels
                self._cancels = []
                parts.extend(cancel_parts(ids, max_bytes))
                stats.cancels_sent += len(ids)
            room = max_in_flight - self._in_flight
            sent = 0
            while queue and sent < room:
                call = queue.popleft()
                if call.done():  # timed out or cancelled while queued
                    continue
                parts.append(call.data)
                call.data = b""
                call.sent = True
                sent += 1
                if self._sample is None:
                    self._sample = call
                    self._sample_at = self._loop.time()
            self._release_at = self._in_flight
            self._in_flight += sent
            stats.requests_sent += sent
            if not parts:
                continue
            frames = join_frames(parts, max_bytes)
            for frame in frames:
                await stream.write(frame)
            stats.frames_sent += len(frames)

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
