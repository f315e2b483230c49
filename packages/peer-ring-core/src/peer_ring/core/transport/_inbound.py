"""The inbound side of a peer link: serving one Exchange stream a peer opened to us.

The stream's *reader* parses each frame and hands every request to the node's inbound
handler. A handler that returns a :class:`Response` directly is answered inline, with no
asyncio Task (the common case: in-memory work). A handler that returns an awaitable gets
exactly one Task, which a cancel from the peer cancels. Every response is serialized and
appended to the stream's outbox; the stream's single *writer* (the RPC handler coroutine
itself) joins everything in the outbox into one frame per write.

Nothing a handler does can break the stream: exceptions become error responses, an
oversized response becomes a ``TOO_LARGE`` response. A frame that cannot be parsed ends
this stream (INVALID_ARGUMENT), never the server.

What a peer can make this node hold is bounded (``TransportLimits``):

- *backpressure*: the reader stops reading while the stream's unsent responses exceed
  ``max_inbound_pending_bytes`` or its running handlers ``max_inbound_pending_requests``.
  A client that writes requests and never reads the answers then fills gRPC's flow-control
  window and its own writes block; the node holds at most about one bound (plus one
  response) for it, instead of every answer it ever asked for.
- *deadlines*: every request's ``timeout_ms`` is clamped to ``max_request_timeout`` (0,
  "unspecified", means ``default_timeout``); a handler Task still running at its deadline
  is cancelled and answered with ``TIMEOUT``.

Both transports serve with these loops: the TCP direct path (:mod:`._tcp_inbound`) and the
gRPC shared frames (:mod:`._grpc_shared`) change a few steps through hooks
(``_open_frame``, ``_take_cancels``, ``_serve_requests``, ``_carrier``), not copies.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from typing import Any, Protocol

from google.protobuf.message import DecodeError

from peer_ring.core._errors import PeerRingError
from peer_ring.core._types import Request, Response, Status
from peer_ring.core.proto import peer_ring_pb2 as pb
from peer_ring.core.transport._base import FieldsDispatch, InboundHandler, TransportLimits
from peer_ring.core.transport._codec import (
    error_response,
    join_frames,
    ok_response_part,
    response_part,
)
from peer_ring.core.transport._deadlines import DeadlineWheel
from peer_ring.core.transport._linger import linger
from peer_ring.core.transport._log import RateLimitedLog
from peer_ring.core.transport._options import EOF
from peer_ring.core.transport._stats import TransportStats

logger = logging.getLogger(__name__)

#: ``Status.OK`` read once (an enum class attribute lookup costs about 0.1 us).
_OK = Status.OK

#: Longest error message of a response (characters); longer ones are cut.
MAX_ERROR_CHARS = 4096


class _Carry:
    def __repr__(self) -> str:
        return "CARRY"


#: Read from a stream in place of a frame whose requests were served in part where the
#: frame arrived (the TCP transport's direct path, :mod:`._tcp_inbound`), which stopped at
#: a bound: the reader waits for room and serves the rest (kept in ``_carry``).
CARRY = _Carry()


class StreamContext(Protocol):
    """What an inbound stream reads its frames from and writes them to: a gRPC servicer
    context, or the TCP transport's :class:`~._tcp_wire.FrameStream`."""

    async def read(self) -> object:
        """The next frame's bytes, or ``EOF``."""
        ...

    async def write(self, frame: bytes, /) -> None:
        """Write one frame."""
        ...

    def peer(self) -> str:
        """The peer's address as the connection sees it (for the log)."""
        ...


class Carrier(Protocol):
    """Takes a stream's encoded answers into its own frames (see ``InboundStream._carrier``)."""

    def carry(self, inbound: Any, parts: list[bytes], size: int) -> bool:
        """Take ``parts`` (``size`` bytes); False when they must be written by ``inbound``."""
        ...


class _Pending:
    """An inbound request whose handler returned an awaitable: its Task and its deadline."""

    __slots__ = ("command", "namespace", "rid", "stream", "task", "tick", "timeout")

    def __init__(
        self,
        stream: InboundStream,
        rid: int,
        namespace: str,
        command: str,
        timeout: float,
        task: asyncio.Future[Any],
    ) -> None:
        self.stream = stream
        self.rid = rid
        self.namespace = namespace
        self.command = command
        self.timeout = timeout
        self.task = task
        self.tick = 0

    def expire(self) -> None:
        """Called by the deadline wheel: the request's (clamped) deadline passed."""
        self.stream._expire(self)


class InboundStream:
    """One accepted Exchange stream.

    Args:
        sender: the peer's address, from the call metadata.
        context: what the stream is read from and written to (the gRPC servicer context).
        on_request: the node's inbound handler.
        limits: message size, inbound bounds and deadlines.
        stats: the transport's counters.
        wheel: where the deadlines of running handlers are kept (the transport's).
        log: where malformed frames are reported (rate-limited: a client can send them in
            a loop); by default every one is logged.
    """

    def __init__(
        self,
        sender: str,
        context: StreamContext,
        on_request: InboundHandler,
        limits: TransportLimits,
        stats: TransportStats,
        wheel: DeadlineWheel,
        log: RateLimitedLog | None = None,
    ) -> None:
        self.sender = sender
        self._context = context
        self._on_request = on_request
        # The fields form of the handler when it offers one (the node's dispatcher does):
        # no Request object per inbound request (see FieldsHandler).
        self._fields: FieldsDispatch | None = getattr(on_request, "dispatch", None)
        self._max_bytes = limits.max_message_bytes
        self._max_pending_bytes = limits.max_inbound_pending_bytes
        self._max_pending_requests = limits.max_inbound_pending_requests
        self._default_timeout = limits.default_timeout
        self._max_timeout = limits.max_request_timeout
        self._stats = stats
        self._wheel = wheel
        self._log = log
        self._loop = asyncio.get_running_loop()
        self._outbox: list[bytes] = []
        #: Bytes of responses queued in the outbox or being written (backpressure).
        self._pending_bytes = 0
        self._wakeup = asyncio.Event()
        #: Set by the writer and by finishing handlers while the reader is paused.
        self._room = asyncio.Event()
        self._paused = False
        self._tasks: dict[int, _Pending] = {}
        self._closed = False
        #: The writer waits for work (not lingering, not writing): a response may be
        #: written at once by whoever has one (the TCP transport's direct path).
        self._writer_idle = False
        #: The requests of a frame left when a direct path stopped at a bound (see CARRY).
        self._carry: Iterator[pb.Request] | None = None
        #: Set when the stream must end with INVALID_ARGUMENT (a malformed frame).
        self.abort_reason: str | None = None

    async def run(self) -> None:
        """Serve the stream until the peer ends it or :meth:`close` is called."""
        reader = self._loop.create_task(self._read_loop())
        try:
            await self._write_loop()
        except Exception as exc:
            # The peer went away while we wrote (cancelled call, reset connection). Handled
            # here: an exception escaping the servicer would be logged by gRPC as an error.
            logger.debug("writing the stream to %s failed: %r", self.sender, exc)
        finally:
            self._closed = True
            reader.cancel()
            pending = list(self._tasks.values())
            self._tasks.clear()
            for item in pending:
                self._wheel.remove(item, item.tick)
                item.task.cancel()
            await asyncio.gather(reader, *(p.task for p in pending), return_exceptions=True)

    def close(self) -> None:
        """End the stream (unsent responses are dropped)."""
        self._closed = True
        self._wakeup.set()
        self._room.set()

    # -- hooks of a stream whose answers may ride elsewhere (see _grpc_shared) --------------

    def _carrier(self) -> Carrier | None:
        """Where the writer hands this stream's answers instead of writing them itself, if
        it takes them (the gRPC shared frames' connection to the sender); None here."""
        return None

    def written(self, size: int) -> None:
        """``size`` bytes of this stream's answers were written (or dropped): below the
        bound again, a paused reader looks once more."""
        self._pending_bytes -= size
        if self._paused:
            self._room.set()

    # -- the writer and the reader -----------------------------------------------------------

    async def _write_loop(self) -> None:
        stats = self._stats
        wakeup = self._wakeup
        context = self._context
        while not self._closed:
            if not self._outbox:
                wakeup.clear()
                self._writer_idle = True
                try:
                    await wakeup.wait()
                finally:
                    self._writer_idle = False
                if self._carrier() is None:  # else handed over at once: the carrier lingers
                    await linger(lambda: len(self._outbox))
                continue
            parts = self._outbox
            self._outbox = []
            size = sum(map(len, parts))
            carrier = self._carrier()
            if carrier is not None and carrier.carry(self, parts, size):
                continue
            frames = join_frames(parts, self._max_bytes)
            # Counted per frame, not per response (the outbox holds only responses).
            stats.responses_sent += len(parts)
            for frame in frames:
                # Blocks while the client does not read (HTTP/2 flow control); the reader
                # then stops reading once the bound is reached: see _wait_for_room.
                await context.write(frame)
            stats.frames_sent += len(frames)
            self.written(size)

    async def _read_loop(self) -> None:
        context = self._context
        try:
            while not self._closed:
                data: Any = await context.read()
                if data is EOF:
                    return
                if data is CARRY:
                    # A direct path served part of a frame and stopped at a bound: wait for
                    # room, then serve the rest here.
                    rest, self._carry = self._carry, None
                    await self._wait_for_room()
                    if self._closed:
                        return
                    if rest is not None and not await self._serve_requests(rest):
                        return
                    if self._outbox:
                        self._wakeup.set()
                    continue
                try:
                    frame = pb.Frame.FromString(data)
                except DecodeError as exc:
                    self._stats.malformed_frames += 1
                    self.abort_reason = f"malformed frame: {exc}"
                    args = (self.sender, context.peer(), exc)
                    message = "malformed frame on the stream from %s (%s): %s"
                    if self._log is not None:
                        self._log.warning("malformed frame", message, *args)
                    else:
                        logger.warning(message, *args)
                    return
                requests = self._open_frame(frame)
                if requests and not await self._serve_requests(iter(requests)):
                    return
                if self._outbox:
                    self._wakeup.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The peer went away mid-read (reset, cancelled call): the stream is over.
            logger.debug("reading the stream from %s failed: %r", self.sender, exc)
        finally:
            self.close()

    def _open_frame(self, frame: pb.Frame) -> Sequence[pb.Request]:
        """Count a parsed frame, act on its cancels and return its requests (counted)."""
        stats = self._stats
        stats.frames_received += 1
        # Cancels first: they name requests of earlier frames, whose slots the opener
        # already reused for the requests of this one.
        cancels = frame.cancels
        if cancels:
            stats.cancels_received += len(cancels)
            self._take_cancels(cancels)
        requests = frame.requests
        if requests:
            stats.requests_received += len(requests)
        return requests

    def _take_cancels(self, cancels: Iterable[int]) -> None:
        """The peer dropped these requests: their running handlers are cancelled."""
        for rid in cancels:
            pending = self._tasks.get(rid)
            if pending is not None:
                self._forget(pending)
                pending.task.cancel()

    async def _serve_requests(self, requests: Iterator[pb.Request]) -> bool:
        """Dispatch ``requests``, pausing at the bounds; False once the stream closed."""
        while not self._dispatch_some(requests):
            await self._wait_for_room()
            if self._closed:
                return False
        return True

    def _dispatch_some(self, requests: Iterator[pb.Request]) -> bool:
        """Dispatch ``requests`` up to a bound: True when all were, False when it stopped
        at one (the rest stay in ``requests``)."""
        dispatch = self._dispatch
        for msg in requests:
            dispatch(msg)
            # Checked per request: one frame of tiny requests may ask for answers far
            # larger than itself. (_over_bounds, inline: this runs per request.)
            if (
                self._pending_bytes > self._max_pending_bytes
                or len(self._tasks) >= self._max_pending_requests
            ):
                return False
        return True

    def _over_bounds(self) -> bool:
        """The stream's unsent answers or its running handlers are at a bound."""
        return (
            self._pending_bytes > self._max_pending_bytes
            or len(self._tasks) >= self._max_pending_requests
        )

    async def _wait_for_room(self) -> None:
        """Stop reading until the writer and the handlers are back under the bounds."""
        self._stats.backpressure_pauses += 1
        logger.debug(
            "stream from %s paused: %d response bytes unsent, %d handlers running",
            self.sender,
            self._pending_bytes,
            len(self._tasks),
        )
        self._paused = True
        self._wakeup.set()  # the writer must drain what is queued
        try:
            # Resume at half the bounds, so that a client hovering at the limit does not
            # flip the reader on and off for every response.
            while not self._closed and (
                self._pending_bytes > self._max_pending_bytes // 2
                or len(self._tasks) > self._max_pending_requests // 2
            ):
                self._room.clear()
                await self._room.wait()
        finally:
            self._paused = False

    def _dispatch(self, msg: pb.Request) -> None:
        rid = msg.id
        # The request's own timeout, clamped to max_request_timeout; 0 (none given) is
        # default_timeout. Each upb field read makes a new object: every field is read once.
        ms = msg.timeout_ms
        if ms == 0:
            timeout = self._default_timeout
        else:
            timeout = ms / 1000.0
            if timeout > self._max_timeout:
                timeout = self._max_timeout
        namespace = msg.namespace
        command = msg.command
        fields = self._fields
        try:
            if fields is not None:
                # The node's dispatcher: the fields themselves, no Request object.
                result = fields(
                    self.sender,
                    namespace,
                    command,
                    msg.key,
                    msg.payload,
                    msg.partition,
                    msg.hint,
                    timeout,
                    True,
                )
            else:
                request = Request(
                    namespace, command, msg.key, msg.payload, msg.partition, msg.hint, timeout
                )
                result = self._on_request(self.sender, request)
        except Exception as exc:
            self._respond(rid, self._handler_failed(namespace, command, exc))
            return
        if type(result) is bytes and fields is not None:
            # A success answered inline (no Task, no Response object): encoded at once.
            part = ok_response_part(rid, result)
            size = len(part)
            if size <= self._max_bytes:
                self._outbox.append(part)
                self._pending_bytes += size
                return
            self._respond(rid, Response(_OK, result, ""))
        elif type(result) is Response and not result.error:
            # The inline path (no Task), and _respond's common case inlined too.
            try:
                part = response_part(rid, result)
            except (TypeError, ValueError):
                part = b""  # e.g. a str payload: _respond answers with the error
            size = len(part)
            if 0 < size <= self._max_bytes:
                self._outbox.append(part)
                self._pending_bytes += size
                return
            self._respond(rid, result)
        elif isinstance(result, Response):
            self._respond(rid, result)  # the inline path: no Task
        elif inspect.isawaitable(result):
            # The handler's coroutine becomes the one Task (a future is used as is); no
            # wrapper coroutine, so a task cancelled before it ever ran leaves no
            # never-awaited coroutine behind.
            task = asyncio.ensure_future(result, loop=self._loop)
            pending = _Pending(self, rid, namespace, command, timeout, task)
            previous = self._tasks.get(rid)
            if previous is not None:
                # A reused id (a buggy or hostile peer): the newer request wins, the older
                # one is abandoned, so the bookkeeping never loses track of a Task.
                self._wheel.remove(previous, previous.tick)
                previous.task.cancel()
            self._tasks[rid] = pending
            pending.tick = self._wheel.add(pending, timeout)
            task.add_done_callback(partial(self._finish, pending))
        else:
            self._respond(rid, self._not_a_response(namespace, command, result))

    def _forget(self, pending: _Pending) -> None:
        if self._tasks.get(pending.rid) is pending:
            del self._tasks[pending.rid]
            self._wheel.remove(pending, pending.tick)
            if self._paused:
                self._room.set()

    def _expire(self, pending: _Pending) -> None:
        """A handler outlived its request's deadline: cancel it, answer TIMEOUT."""
        if self._tasks.get(pending.rid) is not pending or self._closed:
            return
        del self._tasks[pending.rid]
        if self._paused:
            self._room.set()
        self._stats.inbound_timeouts += 1
        pending.task.cancel()
        self._respond(
            pending.rid,
            Response(
                Status.TIMEOUT,
                b"",
                f"{pending.namespace}/{pending.command} exceeded its deadline of "
                f"{pending.timeout:g}s on the receiving node",
            ),
        )
        self._wakeup.set()

    def _finish(self, pending: _Pending, task: asyncio.Future[Any]) -> None:
        # Retrieve the outcome first, always: a Task that failed just before the peer
        # cancelled it would otherwise be reported as "exception was never retrieved".
        exc = None if task.cancelled() else task.exception()
        if self._tasks.get(pending.rid) is not pending:
            return  # cancelled by the peer, expired, or replaced: already answered or dropped
        self._forget(pending)
        if task.cancelled() or self._closed:
            return  # the stream closed (or the handler cancelled itself): nobody waits
        result: object
        if exc is None:
            result = task.result()
        elif isinstance(exc, Exception):
            result = self._handler_failed(pending.namespace, pending.command, exc)
        else:  # KeyboardInterrupt, SystemExit...: not ours to turn into a response
            return
        if not isinstance(result, Response):
            result = self._not_a_response(pending.namespace, pending.command, result)
        self._respond(pending.rid, result)
        self._answer_ready()

    def _answer_ready(self) -> None:
        """A handler's Task answered (its response is in the outbox): the writer sends it."""
        self._wakeup.set()

    def _handler_failed(self, namespace: str, command: str, exc: Exception) -> Response:
        self._stats.handler_errors += 1
        if isinstance(exc, PeerRingError):
            logger.debug("handler %s/%s failed: %s", namespace, command, exc)
        else:
            # Not an error the application meant to signal: most likely a bug, so show it
            # (thinned per exception type: a peer can trigger it with every request).
            message = "handler %s/%s raised on a request from %s"
            args = (namespace, command, self.sender)
            if self._log is not None:
                kind = ("handler", type(exc).__qualname__)
                self._log.warning(kind, message, *args, exc_info=exc)
            else:
                logger.warning(message, *args, exc_info=exc)
        return error_response(exc)

    def _not_a_response(self, namespace: str, command: str, value: object) -> Response:
        error = TypeError(f"handler returned {type(value).__name__}, not a Response")
        return self._handler_failed(namespace, command, error)

    def _respond(self, rid: int, response: Response) -> None:
        error = response.error
        if error and (type(error) is not str or len(error) > MAX_ERROR_CHARS):
            # Error messages often quote the request (an unknown namespace): a request of
            # megabytes must not be echoed back in full.
            text = str(error)
            if len(text) > MAX_ERROR_CHARS:
                cut = MAX_ERROR_CHARS - 40
                text = f"{text[:cut]}... ({len(text) - cut} more characters)"
            response = Response(response.status, response.payload, text)
        try:
            part = response_part(rid, response)
        except (TypeError, ValueError) as exc:  # e.g. a str payload, an invalid status
            part = response_part(rid, error_response(exc))
        if len(part) > self._max_bytes:
            self._stats.oversized_responses += 1
            part = response_part(
                rid,
                Response(
                    Status.TOO_LARGE,
                    b"",
                    f"response of {len(part)} bytes exceeds max_message_bytes={self._max_bytes}",
                ),
            )
        self._outbox.append(part)
        self._pending_bytes += len(part)
