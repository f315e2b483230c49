"""The TCP transport's inbound stream: requests served, and answered, in the turn they arrive.

:class:`~._inbound.InboundStream` serves a frame in three loop turns after the one that
read it: its reader task wakes and dispatches, its writer task wakes, the writer lingers
one turn for more answers, then writes. Each of those turns first runs whatever else the
loop has ready (the host's own callbacks, a load generator's ticker), so an answer waits
for them three times. :class:`TcpInboundStream` takes each frame in the protocol's
``data_received`` instead (``FrameProtocol.on_frame``) while its reader task is idle, and
when the frame carries few requests (:data:`DIRECT_ANSWER_MAX`: the peer has few in
flight), they are answered inline (a handler that returns bytes or a ``Response``) and
the writer is idle too, writes the answers there, with ``transport.write``.

A handler that returns an awaitable gets its Task as before; its answer is written when
the Task finishes if the writer is idle, once per loop turn (the answers of other Tasks
finishing in that turn wait for the writer, which joins them).

Everything else is the base class's, unchanged. Answers that meet a busy writer
(lingering, writing, or waiting for the socket) are queued for it, so a burst still
leaves in few frames; while the socket's buffer is full, answers go to the writer, which
waits for room. The inbound bounds hold on the direct path too: requests are dispatched
one at a time against ``max_inbound_pending_bytes`` / ``max_inbound_pending_requests``;
at a bound the rest of the frame goes to the reader task (:data:`~._inbound.CARRY`), which
waits for room as before, and later frames queue behind it (the connection stops reading
its socket past ``READ_HIGH_WATER`` queued bytes, as before). A frame that does not parse
is left to the reader task, which reports it and ends the stream as before.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import DecodeError

from peer_ring.core.proto import peer_ring_pb2 as pb
from peer_ring.core.transport._codec import join_frames
from peer_ring.core.transport._inbound import InboundStream
from peer_ring.core.transport._tcp_wire import (
    DIRECT_BLOCKED,
    DIRECT_DECLINED,
    DIRECT_DONE,
    FrameStream,
)

_from_string = pb.Frame.FromString

#: A frame of at most this many requests is answered where it arrived (when its handlers
#: answer inline and the writer is idle). A bigger one means the peer has many requests in
#: flight: its answers go to the writer, whose linger joins them with those of the frames
#: that follow (closed-loop load: about half the frames, measured, at 16 and 64 in flight).
DIRECT_ANSWER_MAX = 2


class TcpInboundStream(InboundStream):
    """An :class:`InboundStream` over a :class:`FrameStream` that serves frames where they
    arrive (see the module docstring). Same arguments as :class:`InboundStream`, with a
    :class:`FrameStream` as ``context``."""

    _context: Any  # a FrameStream here (the base class knows only a StreamContext)
    #: A Task's answer was written directly in this loop turn (see _answer_ready).
    _direct_turn = False

    async def run(self) -> None:
        """Serve the stream (see :meth:`InboundStream.run`), frames taken as they arrive."""
        stream: FrameStream = self._context
        stream.take_frames(self.take_frame)
        try:
            await super().run()
        finally:
            stream.take_frames(None)

    def take_frame(self, body: bytes) -> int:
        """Serve one frame in the turn that read it; a ``DIRECT_*`` code says how far."""
        if self._closed or self._paused:
            return DIRECT_DECLINED
        try:
            frame = _from_string(body)
        except DecodeError:
            return DIRECT_DECLINED  # the reader task parses it again, reports it, ends
        requests = self._open_frame(frame)
        if requests:
            rest = iter(requests)
            if not self._dispatch_some(rest):
                self._carry = rest  # the reader task waits for room, then goes on
                if self._outbox:
                    self._wakeup.set()
                return DIRECT_BLOCKED
        if self._outbox and not (
            len(requests) <= DIRECT_ANSWER_MAX and self._writer_idle and self._write_outbox()
        ):
            self._wakeup.set()
        return DIRECT_DONE

    def _answer_ready(self) -> None:
        # A Task's answer: written here when the writer is idle, once per loop turn (the
        # answers of other Tasks finishing in the same turn wait for the writer: one frame).
        if self._writer_idle and not self._direct_turn and self._write_outbox():
            self._direct_turn = True
            self._loop.call_soon(self._end_direct_turn)
        else:
            self._wakeup.set()

    def _end_direct_turn(self) -> None:
        self._direct_turn = False

    def _write_outbox(self) -> bool:
        """Write the outbox now (the writer is idle); False if the socket cannot take it."""
        parts = self._outbox
        frames = join_frames(parts, self._max_bytes)
        if not self._context.write_now(frames):
            return False
        self._outbox = []
        stats = self._stats
        stats.responses_sent += len(parts)
        stats.frames_sent += len(frames)
        stats.direct_frames += len(frames)
        self.written(sum(map(len, parts)))  # a paused reader re-checks the bounds
        return True
