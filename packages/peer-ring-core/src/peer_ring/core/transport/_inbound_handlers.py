"""An inbound stream's handlers: each request to the node's handler, each answer encoded.

:class:`HandlerBook` is the part of :class:`~._inbound.InboundStream` that dispatches the
requests its reader hands over. A handler that returns a :class:`Response` (or, through
the node's fields dispatcher, the payload bytes) directly is answered inline, with no
asyncio Task (the common case: in-memory work). A handler that returns an awaitable gets
exactly one Task, which a cancel from the peer cancels, and whose request's deadline
(``timeout_ms`` clamped to ``max_request_timeout``; 0 means ``default_timeout``) is kept
in the transport's :class:`~._deadlines.DeadlineWheel`: a Task still running then is
cancelled and answered with ``TIMEOUT``. Every answer is encoded and appended to the
stream's outbox, which the stream's writer sends.

Nothing a handler does can break the stream: exceptions become error responses, an
oversized response becomes a ``TOO_LARGE`` response. A base class, not a helper object
(as :class:`~._outbound_calls.CallBook` for the outbound side): a request pays no extra
call or attribute hop for the split.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from functools import partial
from typing import Any

from peer_ring.core._errors import PeerRingError
from peer_ring.core._types import Request, Response, Status
from peer_ring.core.proto import peer_ring_pb2 as pb
from peer_ring.core.transport._base import FieldsDispatch, InboundHandler
from peer_ring.core.transport._codec import error_response, ok_response_part, response_part
from peer_ring.core.transport._deadlines import DeadlineWheel
from peer_ring.core.transport._log import RateLimitedLog
from peer_ring.core.transport._stats import TransportStats

logger = logging.getLogger(__name__)

#: ``Status.OK`` read once (an enum class attribute lookup costs about 0.1 us).
_OK = Status.OK

#: Longest error message of a response (characters); longer ones are cut.
MAX_ERROR_CHARS = 4096


class _Pending:
    """An inbound request whose handler returned an awaitable: its Task and its deadline."""

    __slots__ = ("command", "namespace", "rid", "stream", "task", "tick", "timeout")

    def __init__(
        self,
        stream: HandlerBook,
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


class HandlerBook:
    """Dispatches requests and encodes their answers (see the module docstring). The
    fields are :class:`~._inbound.InboundStream`'s, set by its ``__init__``."""

    sender: str
    _on_request: InboundHandler
    _fields: FieldsDispatch | None
    _max_bytes: int
    _default_timeout: float
    _max_timeout: float
    _stats: TransportStats
    _wheel: DeadlineWheel
    _log: RateLimitedLog | None
    _loop: asyncio.AbstractEventLoop
    _outbox: list[bytes]
    _pending_bytes: int
    _wakeup: asyncio.Event
    _room: asyncio.Event
    _paused: bool
    _tasks: dict[int, _Pending]
    _closed: bool

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
