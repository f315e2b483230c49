"""The inbound side of a peer link: serving one Exchange stream a peer opened to us.

The stream's *reader* parses each frame and hands every request to the node's inbound
handler (the dispatch and the answers' encoding: :mod:`._inbound_handlers`, base class
:class:`~._inbound_handlers.HandlerBook`). Every answer is appended to the stream's
outbox; the stream's single *writer* (the RPC handler coroutine itself) joins everything
in the outbox into one frame per write. A frame that cannot be parsed ends this stream
(INVALID_ARGUMENT), never the server.

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
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

from google.protobuf.message import DecodeError

from peer_ring.core.proto import peer_ring_pb2 as pb
from peer_ring.core.transport._base import FieldsDispatch, InboundHandler, TransportLimits
from peer_ring.core.transport._codec import join_frames
from peer_ring.core.transport._deadlines import DeadlineWheel
from peer_ring.core.transport._inbound_handlers import MAX_ERROR_CHARS, HandlerBook, _Pending
from peer_ring.core.transport._linger import linger
from peer_ring.core.transport._log import RateLimitedLog
from peer_ring.core.transport._options import EOF
from peer_ring.core.transport._stats import TransportStats

logger = logging.getLogger(__name__)

# MAX_ERROR_CHARS re-exported: tests import it from here.
__all__ = ["CARRY", "MAX_ERROR_CHARS", "Carrier", "InboundStream", "StreamContext"]


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


class InboundStream(HandlerBook):
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
