"""Shared frames: a node's answers to a peer ride on its own Exchange stream to that peer.

Every gRPC link between two nodes has two Exchange streams, one per direction of requests
(``A -> B`` opened by A, ``B -> A`` opened by B). Without shared frames, B answers A's
requests on the server side of ``A -> B`` and sends its own requests on ``B -> A``: under
symmetric load each node writes two frames per round trip to each peer, one of requests
and one of answers. A grpc.aio frame costs about 200 µs of CPU (thread hand-offs, both
ends; docs/benchmarks.md, "gRPC transport, round 6"), far more than the operations in
it, so frames per operation decide the transport's cost.

With shared frames B writes its answers to A's requests on *its own* stream ``B -> A``,
in the same frames as its requests to A (``Frame.responses`` next to ``Frame.requests``),
and A's server side of that stream hands them to A's connection to B, which matches them
by id as if they had come on ``A -> B``. Answers are not held: queued answers end a
request hold at once (:mod:`._linger`), and the requests queued then go out with them.

Negotiation (no silent wire change): the opener offers it with the call metadata
``x-peer-ring-shared-frames: <instance>`` (a random token per transport); a server that
takes it answers the same key with its own instance token in its initial metadata (next to
``x-peer-ring-accepted``). Only then does the *opener* put answers on that stream (the
server promised to route them), and only answers to requests that came on a stream opened
by the instance its own stream reaches: a node restarted at the same address numbers its
requests afresh, so an answer to its old instance could match a new request. An older
node neither offers nor echoes the key, and ignores it: with it, both directions keep the
two-stream behaviour. While the
node's own stream to the peer is down, or not negotiated, the answers go on the server side
of the peer's stream, as before; the peer accepts answers on either path at any time.

Bounds: answers handed to the connection still count against the inbound stream's
``max_inbound_pending_bytes`` until written (backpressure is unchanged). A connection takes
at most ``CARRY_BUDGET_SHARE`` of that bound of unwritten answers; beyond it the inbound
stream writes on its own server side. Without that, two nodes whose inbound readers both
paused could each wait for the other's write to drain: the server side of a stream is read
by the opener's reader, which never pauses, so the fallback always drains.

These classes extend :class:`~._outbound.PeerConnection` and :class:`~._inbound.InboundStream`
through the hooks of their writer and reader loops (one loop each, shared with the TCP
transport): the connection's frames take the handed-over answers first, and the inbound
stream hands its answers over, reads the sender's answers and defers requests over the
bounds instead of pausing its reader.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import grpc.aio

from peer_ring.core._errors import PeerUnavailableError
from peer_ring.core.proto import peer_ring_pb2 as pb
from peer_ring.core.transport._inbound import InboundStream
from peer_ring.core.transport._options import SHARED_FRAMES_KEY
from peer_ring.core.transport._outbound import PeerConnection

logger = logging.getLogger(__name__)

#: Share of ``max_inbound_pending_bytes`` a connection takes as unwritten answers (see the
#: module docstring: the rest always has the server-side path, so a paused reader resumes).
CARRY_BUDGET_SHARE = 4


def shared_frames_instance(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The instance id a peer sent with ``SHARED_FRAMES_KEY`` (its offer, or its echo of
    ours), or None: the peer does not do shared frames."""
    for key, value in metadata or ():
        if key == SHARED_FRAMES_KEY and value:
            return str(value)
    return None


class SharedCounters:
    """Counters of shared frames, merged into ``GrpcTransport.stats()``.

    Attributes:
        responses_carried: answers written on this node's own stream to the asker.
        shared_frames: frames of a carrying stream with both requests and answers.
        answer_frames: frames of a carrying stream with answers and no request.
        request_frames: frames of a carrying stream with requests and no answer.
    """

    __slots__ = ("answer_frames", "request_frames", "responses_carried", "shared_frames")

    def __init__(self) -> None:
        self.responses_carried = 0
        self.shared_frames = 0
        self.answer_frames = 0
        self.request_frames = 0

    def as_dict(self) -> dict[str, int]:
        """The counters by name."""
        return {name: getattr(self, name) for name in self.__slots__}


class SharedPeerConnection(PeerConnection):
    """A :class:`PeerConnection` whose frames also carry this node's answers to the peer.

    Takes :class:`PeerConnection`'s arguments plus ``counters``; ``metadata`` must offer
    shared frames (``SHARED_FRAMES_KEY``) for the peer to accept them.
    """

    def __init__(
        self, *args: Any, counters: SharedCounters, first_id: int = 1, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        # Answers to this connection may arrive on the peer's stream, which outlives a
        # forgotten connection: ids continue above every earlier connection's (the
        # transport's floor), so a stale answer never matches a newer request.
        self._next_id = first_id
        self._counters = counters
        #: The current stream's server agreed to shared frames (set by the writer).
        self.carrying = False
        #: The instance id the peer's server echoed on the current stream (see carry()).
        self.peer_instance: str | None = None
        #: Answers handed over and not yet taken by the writer: (stream, parts, bytes).
        self._carried: list[tuple[SharedInboundStream, list[bytes], int]] = []
        #: Answers taken into the frame being written (released by _riders_written).
        self._writing: list[tuple[SharedInboundStream, list[bytes], int]] = []
        #: Bytes of answers handed over and not yet written (the write in progress included).
        self._carried_bytes = 0
        self._carry_budget = self._limits.max_inbound_pending_bytes // CARRY_BUDGET_SHARE

    def carry(self, inbound: SharedInboundStream, parts: list[bytes], size: int) -> bool:
        """Take ``parts`` (encoded answers of ``inbound``, ``size`` bytes) into the next
        frame; False when this stream does not carry answers, the budget is used up, or
        ``inbound`` was opened by another instance of the peer than the one this stream
        reaches (a restarted node at the same address: its ids mean other requests)."""
        if (
            not self.carrying
            or inbound.peer_instance != self.peer_instance
            or self._carried_bytes + size > self._carry_budget
        ):
            return False
        self._carried.append((inbound, parts, size))
        self._carried_bytes += size
        self._wakeup.set()  # wakes an idle writer and ends a hold: requests ride along
        return True

    def fail_sent(self, reason: str) -> None:
        """The peer's stream to this node ended: answers it carried may be lost with it,
        so the requests written and unanswered fail now (``PeerUnavailableError``, as on a
        broken stream) instead of waiting for their deadlines."""
        sent = [call for call in self._calls.values() if call.sent and not call.done()]
        for call in sent:
            self._forget(call)
            call.set_exception(PeerUnavailableError(self.peer, reason))
            self.failed(call)
        self._stats.unavailable += len(sent)

    @property
    def next_id(self) -> int:
        """The id the next request gets (the floor of the next connection to this peer)."""
        return self._next_id

    def _give_back(self) -> None:
        """The stream ended: unwritten answers go back to their inbound streams."""
        carried = self._carried
        self._carried = []
        for inbound, parts, size in carried:
            self._carried_bytes -= size
            inbound.take_back(parts)

    async def _write_loop(self, stream: grpc.aio.StreamStreamCall[bytes, bytes]) -> None:
        initial = await stream.initial_metadata()  # already received: _open waited for it
        self.peer_instance = shared_frames_instance(initial)
        self.carrying = self.peer_instance is not None
        try:
            await super()._write_loop(stream)
        finally:
            self.carrying = False
            self.peer_instance = None
            self._give_back()

    # -- FrameWriter's hooks: the carried answers ride first in the next frame -------------

    def _riders_waiting(self) -> int:
        return len(self._carried)

    def _waiting(self) -> int:
        return len(self._queue) + len(self._carried)

    def _take_riders(self) -> list[bytes]:
        parts: list[bytes] = []
        batch = self._carried
        if not batch:
            return parts
        self._carried = []
        self._writing = batch
        for _, answers, _ in batch:
            parts += answers
        return parts

    def _count_frame(self, riders: int, requests: int) -> None:
        counters = self._counters
        if riders:
            self._stats.responses_sent += riders
            counters.responses_carried += riders
            if requests:
                counters.shared_frames += 1
            else:
                counters.answer_frames += 1
        elif self.carrying:
            counters.request_frames += 1

    def _riders_written(self) -> None:
        """Written (or lost with the stream): release the inbound streams' byte counts."""
        batch = self._writing
        self._writing = []
        for inbound, _, size in batch:
            self._carried_bytes -= size
            inbound.written(size)


class SharedInboundStream(InboundStream):
    """An :class:`InboundStream` that hands its answers to this node's own connection to
    the sender when that connection carries them, and takes the sender's answers to this
    node's requests from its frames.

    Takes :class:`InboundStream`'s arguments plus ``links`` (the transport's connections by
    peer address), ``peer_instance`` (the instance id of the sender's offer; None when this
    stream did not negotiate shared frames: only then are answers in its frames accepted)
    and ``max_deferred`` (requests read past the inbound bounds that wait for room, at
    most; see ``_deferred``).
    """

    def __init__(
        self,
        *args: Any,
        links: Mapping[str, PeerConnection],
        peer_instance: str | None,
        max_deferred: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._links = links
        #: The sender's instance id from its offer; None: not negotiated on this stream.
        self.peer_instance = peer_instance
        self._shared = peer_instance is not None
        # Requests read while the handlers are at the bounds, with their sizes: the reader
        # keeps reading (the sender's answers to this node's requests ride on this stream
        # and must not wait behind them); the drainer task dispatches them once there is
        # room. Bounded too: past max_inbound_pending_bytes of them, or max_deferred (the
        # transport passes max_in_flight_per_peer: a sender within that bound never gets
        # there), the reader stops as before (see _deferral_full).
        self._deferred: deque[tuple[pb.Request, int]] = deque()
        self._deferred_bytes = 0
        self._max_deferred = max_deferred
        self._dropped: set[int] = set()  # ids of deferred requests the sender cancelled
        self._drainer: asyncio.Task[None] | None = None
        self._drained = asyncio.Event()

    def _carrier(self) -> SharedPeerConnection | None:
        """This node's connection to the sender, when its stream carries answers."""
        link = self._links.get(self.sender)
        if isinstance(link, SharedPeerConnection) and link.carrying:
            return link
        return None

    async def run(self) -> None:
        """Serve the stream; when it ends, this node's requests in flight to the sender
        fail at once if their answers could have been travelling on it."""
        try:
            await super().run()
        finally:
            link = self._links.get(self.sender) if self._shared else None
            # Only if this node's stream reaches the instance that opened this one: answers
            # for it could have been on this stream (see SharedPeerConnection.carry).
            if isinstance(link, SharedPeerConnection) and link.peer_instance == self.peer_instance:
                link.fail_sent(f"the stream from {self.sender}, which carried answers, ended")

    def close(self) -> None:
        """End the stream (unsent responses and deferred requests are dropped)."""
        super().close()
        self._drained.set()
        if self._drainer is not None:
            self._drainer.cancel()

    def take_back(self, parts: list[bytes]) -> None:
        """Answers the connection could not write (its stream ended): written here."""
        if self._closed:
            return
        self._outbox[:0] = parts
        self._wakeup.set()

    # -- InboundStream's hooks: answers first, and requests over the bounds deferred ---------

    def _open_frame(self, frame: pb.Frame) -> Sequence[pb.Request]:
        # The sender's answers to this node's requests first: they must not wait behind
        # this stream's bounds (see _serve_requests).
        responses = frame.responses
        if responses:
            self._on_answers(responses)
        return super()._open_frame(frame)

    def _take_cancels(self, cancels: Iterable[int]) -> None:
        super()._take_cancels(cancels)
        if self._deferred:
            self._dropped.update(cancels)

    async def _serve_requests(self, requests: Iterator[pb.Request]) -> bool:
        """Dispatch ``requests`` until a bound is reached and defer the rest: the reader
        keeps reading. It stops only while the deferred requests are at their bounds."""
        if self._drainer is not None or not self._dispatch_some(requests):
            self._defer(requests)  # behind the deferred ones, in order
            while self._deferral_full() and not self._closed:
                if self._outbox:
                    self._wakeup.set()
                self._drained.clear()
                await self._drained.wait()
        return not self._closed

    def _deferral_full(self) -> bool:
        return (
            self._deferred_bytes > self._max_pending_bytes
            or len(self._deferred) >= self._max_deferred
        )

    def _defer(self, requests: Iterator[pb.Request]) -> None:
        for msg in requests:
            size = msg.ByteSize()
            self._deferred.append((msg, size))
            self._deferred_bytes += size
        if self._drainer is None:
            self._drainer = self._loop.create_task(self._drain())

    async def _drain(self) -> None:
        """Dispatch the deferred requests as room appears (the reader's pause, moved)."""
        deferred = self._deferred
        try:
            while not self._closed:
                await self._wait_for_room()
                if self._closed:
                    return
                while deferred and not self._over_bounds():
                    msg, size = deferred.popleft()
                    self._deferred_bytes -= size
                    if self._dropped and msg.id in self._dropped:
                        continue  # cancelled by the sender while deferred
                    self._dispatch(msg)
                self._drained.set()
                if self._outbox:
                    self._wakeup.set()
                if not deferred and not self._over_bounds():
                    return
        finally:
            self._drainer = None
            if not deferred:
                self._dropped.clear()

    def _on_answers(self, responses: Any) -> None:
        """Answers to this node's requests, sent on the sender's own stream."""
        link = self._links.get(self.sender) if self._shared else None
        if link is None:
            # Not negotiated on this stream, or the connection is gone (forgotten peer):
            # nobody waits for them.
            self._stats.responses_received += len(responses)
            self._stats.late_responses += len(responses)
            return
        link._on_responses(responses)
