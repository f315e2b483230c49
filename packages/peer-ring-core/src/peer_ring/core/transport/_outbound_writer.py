"""A peer link's writer: the one task that writes this node's frames to the stream.

:class:`FrameWriter` is the part of :class:`~._outbound.PeerConnection` that drains the
request queue into frames (coalescing, in-flight bound, cancellations) and, for gRPC,
holds new requests back while the previous frame is unanswered (see :mod:`._linger`). A
base class, not a helper object: the loop runs on the connection's own fields.
"""

from __future__ import annotations

import grpc.aio

from peer_ring.core.transport._codec import cancel_parts, join_frames
from peer_ring.core.transport._linger import HOLD_MIN_IN_FLIGHT, hold, linger
from peer_ring.core.transport._outbound_calls import CallBook


class FrameWriter(CallBook):
    """Writes queued requests and cancellations (see the module docstring)."""

    latency: float | None  # the peer's round trip, moving average (PeerConnection sets it)

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
                    await hold(wakeup, self._hold, self.latency)  # the cap follows the rtt
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
