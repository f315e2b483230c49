"""A peer link's requests: :class:`OutboundCall` and the bookkeeping around it.

:class:`CallBook` is the part of :class:`~._outbound.PeerConnection` that accepts
requests (:meth:`CallBook.submit`), keeps every unresolved one by id, groups their
deadlines per wheel tick (:class:`~._deadlines.DeadlineGroup`) and settles them on a
timeout, a cancellation or a broken stream. It is a base class, not a helper object, so a
request costs no extra call or attribute hop; :class:`~._outbound.PeerConnection`'s
``__init__`` sets the fields declared here.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

from peer_ring.core._errors import (
    InvalidArgumentError,
    MessageTooLargeError,
    OverloadedError,
    PeerUnavailableError,
    RequestTimeoutError,
)
from peer_ring.core._types import Request, Response
from peer_ring.core.transport._base import CallOwner, TransportLimits
from peer_ring.core.transport._codec import request_fields_part
from peer_ring.core.transport._deadlines import DeadlineGroup, DeadlineWheel
from peer_ring.core.transport._stats import TransportStats

#: Longest request deadline in seconds (about 11.5 days); longer ones, inf included, are cut.
MAX_TIMEOUT = 1_000_000.0

#: Makes an object without calling its ``__init__`` (a DeadlineGroup per tick change).
_new_object = object.__new__

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


class OutboundCall(asyncio.Future[Response]):
    """The future of one request: it *is* the request's bookkeeping entry.

    Subclassing the future (instead of adding a done-callback) lets a cancellation by the
    caller release the in-flight slot at once, at no cost on the normal path.

    A call made by :meth:`CallBook.submit` with an *owner* is not resolved on an
    answer: the reader tells the owner directly, in the same loop turn, as
    ``owner.answered(peer, hint, payload)`` for a success and ``owner.on_response(peer,
    hint, response)`` for an error status. That saves the future's result, a done-callback
    and its partial, its scheduling and a loop turn per request, and the ``Response``
    object of every success (the coordinator's operations work this way). A failure or a
    cancellation resolves the call and is delivered through the loop, as a done-callback
    would be, as ``owner.on_done(peer, hint, call)``. A caller may also set :attr:`owner`
    and :attr:`hint` on a call of :meth:`CallBook.request` that is not done yet
    (``Transport.submit``'s default does).
    """

    # Set by CallBook.submit right after construction: no Python __init__, which
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
    _conn: CallBook
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


class CallBook:
    """The requests of one peer link (see the module docstring); the fields below are set
    by :class:`~._outbound.PeerConnection`'s ``__init__``."""

    peer: str
    _limits: TransportLimits
    _wheel: DeadlineWheel
    _monotonic: Callable[[], float]
    _resolution: float
    _no_group: DeadlineGroup
    _group: DeadlineGroup
    _stats: TransportStats
    _loop: asyncio.AbstractEventLoop
    _max_bytes: int
    _max_in_flight: int
    _capacity: int
    _state: _State
    _down_reason: str
    _closed_error: ErrorFactory
    _task: asyncio.Task[None] | None
    _calls: dict[int, OutboundCall]
    _queue: deque[OutboundCall]
    _in_flight: int
    _cancels: list[int]
    _wakeup: asyncio.Event
    _writer_idle: bool
    # Requests are written by submit() itself, not the writer, while fewer than this many
    # are in flight and the writer is idle: 0 (gRPC) never; see TcpPeerConnection.
    _direct_below: int
    _next_id: int
    _hold: float
    _release_at: int
    _holding: bool
    _sample: OutboundCall | None
    _sample_at: float

    def start(self) -> None:
        """Start connecting (see :meth:`~._outbound.PeerConnection.start`)."""
        raise NotImplementedError

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
        if self._writer_idle and state is _UP:
            if (
                self._in_flight < self._direct_below
                and not self._queue
                and not self._cancels
                and self._send_now(call)
            ):
                return call
            self._queue.append(call)
            if self._in_flight < self._max_in_flight:
                # Only the first request of a frame wakes the writer (Event.set is a Python
                # call); a busy writer looks at the queue before it waits again.
                self._writer_idle = False
                self._wakeup.set()
            return call
        self._queue.append(call)
        return call

    def _send_now(self, call: OutboundCall) -> bool:
        """Write ``call`` at once, without the writer task (see ``_direct_below``); False
        if it cannot be (it is then queued). Only links with ``_direct_below > 0`` call it."""
        return False

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
