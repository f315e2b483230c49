"""A peer link's writer: the one task that writes this node's frames to the stream.

:class:`FrameWriter` is the part of :class:`~._outbound.PeerConnection` that drains the
request queue into frames (coalescing, in-flight bound, cancellations) and, for gRPC,
holds new requests back while the previous frame is unanswered (see :mod:`._linger`). A
base class, not a helper object: the loop runs on the connection's own fields.

The loop is the only one of both transports' outbound links. Frames may also carry parts
other than requests and cancels (the gRPC shared frames' answers, :mod:`._grpc_shared`):
the hooks below (``_riders_waiting``, ``_waiting``, ``_take_riders``, ``_count_frame``,
``_riders_written``) are where a subclass adds them; here there are none.
"""

from __future__ import annotations

import grpc.aio

from peer_ring.core.transport._codec import cancel_parts, join_frames
from peer_ring.core.transport._linger import HOLD_MIN_IN_FLIGHT, hold, linger
from peer_ring.core.transport._outbound_calls import CallBook


class FrameWriter(CallBook):
    """Writes queued requests and cancellations (see the module docstring)."""

    latency: float | None  # the peer's round trip, moving average (PeerConnection sets it)

    # -- hooks: parts that ride in a frame besides requests and cancels (none here) --------

    def _riders_waiting(self) -> int:
        """How many riders wait for the next frame: they wake the writer and end a hold.
        Asked only when the writer would otherwise wait."""
        return 0

    def _take_riders(self) -> list[bytes]:
        """A new list with the riders' parts, which start the next frame (taken from the
        waiting ones); ``_riders_written`` follows the frame's write when it is not empty."""
        return []

    def _count_frame(self, riders: int, requests: int) -> None:
        """A frame of ``riders`` riders and ``requests`` requests is about to be written
        (counted before the write: the peer may act on it before the writer resumes)."""

    def _riders_written(self) -> None:
        """The riders taken last were written, or lost with the stream (the write raised)."""

    def _waiting(self) -> int:
        """What a linger watches grow: the queued requests (and riders, where there are)."""
        return len(self._queue)

    async def _write_loop(self, stream: grpc.aio.StreamStreamCall[bytes, bytes]) -> None:
        stats = self._stats
        queue = self._queue
        wakeup = self._wakeup
        max_bytes = self._max_bytes
        max_in_flight = self._max_in_flight
        waiting = self._waiting
        while True:
            if (
                not self._cancels
                and not (queue and self._in_flight < max_in_flight)
                and not self._riders_waiting()
            ):
                wakeup.clear()
                self._writer_idle = True
                try:
                    await wakeup.wait()
                finally:
                    self._writer_idle = False
                await linger(waiting)
                continue
            if (
                self._hold
                and self._in_flight > self._release_at
                and self._in_flight >= HOLD_MIN_IN_FLIGHT
                and not self._cancels
                and not self._riders_waiting()  # riders are never held
            ):
                self._holding = True
                try:
                    await hold(wakeup, self._hold, self.latency)  # the cap follows the rtt
                finally:
                    self._holding = False
                self._release_at = self._in_flight  # answered or not: the next frame goes out
                await linger(waiting)
                continue
            parts = self._take_riders()
            riders = len(parts)
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
            self._count_frame(riders, sent)
            frames = join_frames(parts, max_bytes)
            try:
                for frame in frames:
                    await stream.write(frame)
            finally:
                if riders:
                    self._riders_written()
            stats.frames_sent += len(frames)
