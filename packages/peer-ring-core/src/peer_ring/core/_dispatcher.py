"""The dispatcher: the one path by which a command handler is invoked.

Requests from peers (single or batched) and runs the coordinator makes on its own node go
through :meth:`Dispatcher.dispatch`: the same admission (hinted writes are stored for their
replica, reads of partitions still being pulled wait or are refused), the same handler
invocation, the same validation of the result (``bytes``; ``bytearray`` and
``memoryview`` are converted) and the same mapping of errors to a wire status. Its outcome
is the handler's ``bytes`` for a success answered inline (no :class:`Response` object on
the hot path) and a :class:`Response` otherwise; the coordinator turns either into a reply
the same way for local and remote runs, so a handler behaves identically wherever it runs.
Peers' requests enter through the same method with ``inbound=True``: the transports'
readers pass the decoded fields, without building a :class:`Request`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, NamedTuple

from peer_ring.core._batch import BATCH, decode_items, encode_results
from peer_ring.core._clock import Clock
from peer_ring.core._command import Command, Handler
from peer_ring.core._errors import (
    InvalidArgumentError,
    NotRunningError,
    RequestTimeoutError,
    UnknownCommandError,
)
from peer_ring.core._membership import Membership
from peer_ring.core._result import CommandContext
from peer_ring.core._ring import _fingerprint64
from peer_ring.core._status import error_for_status, status_for_error
from peer_ring.core._sync import INTERNAL, PartitionNotReadyError
from peer_ring.core._types import Request, Response, Status

if TYPE_CHECKING:
    from peer_ring.core._sync import SyncManager

logger = logging.getLogger(__name__)

#: ``Status.OK`` read once: the attribute lookup on the enum class costs about 0.1 us,
#: and the request path compares or builds an OK status several times per operation.
_OK = Status.OK

#: A read that reaches a replica still pulling its partition waits at most this share of
#: its timeout (and at most _READ_WAIT_MAX seconds) for the pull before it is refused.
_READ_WAIT_SHARE = 0.5
_READ_WAIT_MAX = 1.0

_RESERVED_PREFIX = "__peer_ring"

#: Sources whose command contexts are kept (see ``Dispatcher._context``); past it, the
#: cache starts over.
_MAX_CONTEXT_SOURCES = 64


class Registered(NamedTuple):
    """A registered command and its handler."""

    command: Command
    handler: Handler


class Dispatcher:
    """Registered commands of one node and the single way to run them."""

    def __init__(
        self, address: str, clock: Clock, membership: Membership, request_timeout: float
    ) -> None:
        self._address = address
        self._clock = clock
        self._membership = membership
        self._request_timeout = request_timeout
        #: (namespace, name) -> registration; read directly by the coordinator's hot path.
        self.commands: dict[tuple[str, str], Registered] = {}
        self.sync: SyncManager | None = None  # set by the node once built (it needs us too)
        #: False once the node is stopping: application requests are then refused
        #: UNAVAILABLE (coordinators use a substitute or another holder) instead of being
        #: applied to a node whose data is about to go away.
        self.accepting = False
        # source -> partition -> the context of its keyed commands without a hint.
        self._contexts: dict[str, dict[int, CommandContext]] = {}

    # -- registration ------------------------------------------------------------------

    def register(self, namespace: str, command: Command, handler: Handler) -> None:
        """Register ``handler`` for ``command`` in ``namespace`` (see ``PeerRing.register``)."""
        if not isinstance(namespace, str) or not namespace:
            raise InvalidArgumentError("namespace must be a non-empty string")
        if namespace.startswith(_RESERVED_PREFIX):
            raise InvalidArgumentError(f"namespace {namespace!r} is reserved for the core")
        if not callable(handler):
            raise InvalidArgumentError(f"handler of {namespace}/{command.name} is not callable")
        if (namespace, command.name) in self.commands:
            raise InvalidArgumentError(f"{namespace}/{command.name} is already registered")
        self.commands[(namespace, command.name)] = Registered(command, handler)

    def declaration(self, namespace: str, name: str) -> Command | None:
        """The command registered under ``(namespace, name)``, if any."""
        entry = self.commands.get((namespace, name))
        return None if entry is None else entry.command

    def unknown(self, namespace: str, name: str) -> UnknownCommandError:
        """The error for a command nobody registered here."""
        return UnknownCommandError(f"unknown command {namespace}/{name} on {self._address}")

    # -- inbound -------------------------------------------------------------------------

    def __call__(self, source: str, request: Request) -> Response | Awaitable[Response]:
        """The transport's inbound handler (``InboundHandler``): a peer's request."""
        return self.on_request(source, request)

    def on_request(self, source: str, request: Request) -> Response | Awaitable[Response]:
        """A peer's request as a :class:`Request` (internal, batched or single)."""
        out = self.dispatch(
            source,
            request.namespace,
            request.command,
            request.key,
            request.payload,
            request.partition,
            request.hint,
            request.timeout,
            True,
        )
        return Response(_OK, out, "") if isinstance(out, bytes) else out

    def _inbound_other(
        self,
        source: str,
        namespace: str,
        name: str,
        key: bytes,
        payload: bytes,
        partition: int,
        hint: str,
        timeout: float,
    ) -> Response | Awaitable[Response]:
        """A peer's request for no registered command: internal, batched or unknown."""
        sync = self.sync
        assert sync is not None
        request = Request(namespace, name, key, payload, partition, hint, timeout)
        if namespace == INTERNAL:
            return sync.on_internal(source, request)
        membership = self._membership
        if membership.suspects or membership.downs:  # else inbound has nothing to do
            sync.inbound(source)
        if not self.accepting:
            return self._stopping()
        if namespace == BATCH:
            return self._on_batch(source, request)
        return Response(Status.UNKNOWN_COMMAND, b"", str(self.unknown(namespace, name)))

    def _stopping(self) -> Response:
        return error_response(NotRunningError(f"node {self._address} is stopping"))

    def _on_batch(self, source: str, request: Request) -> Response | Awaitable[Response]:
        try:
            namespace, items = decode_items(request.payload)
        except InvalidArgumentError as exc:
            return error_response(exc)
        if namespace.startswith(_RESERVED_PREFIX):
            return error_response(InvalidArgumentError(f"namespace {namespace!r} is reserved"))
        dispatch = self.dispatch
        name = request.command
        timeout = request.timeout
        outs = [
            _as_response(
                dispatch(source, namespace, name, i.key, i.payload, i.partition, i.hint, timeout)
            )
            for i in items
        ]
        ready = [o for o in outs if isinstance(o, Response)]
        if len(ready) == len(outs):
            return Response(_OK, encode_results(ready), "")
        return _gather_batch(outs)

    # -- the one invocation path ---------------------------------------------------------

    def dispatch(
        self,
        source: str,
        namespace: str,
        name: str,
        key: bytes,
        payload: bytes,
        partition: int,
        hint: str,
        timeout: float,
        inbound: bool = False,
    ) -> bytes | Response | Awaitable[Response]:
        """Admit and run one command on this node (``source`` is the coordinator).

        ``inbound`` is true for a request a peer sent (the transports' inbound readers call
        this with the decoded fields, no :class:`Request` object): internal and batched
        requests are then served too, the failure detector hears from ``source``, and a
        stopping node refuses. Local runs and the items of a batch pass False.

        A hinted write for another replica is stored as a hint. A read of a partition
        this node is still pulling waits a little for the pull, then is refused "not
        ready"; a read forwarded here in place of another replica is answered only if
        this node holds a complete copy. Otherwise the handler runs.

        For a command that reads or mutates a key, the handler's ``ctx.partition`` is the
        one this node computed from the key, not the sender's claim (a peer's may be wrong).

        Returns:
            The handler's ``bytes`` themselves for a success answered inline (no
            :class:`Response` object on the hot path), a :class:`Response` for any other
            outcome answered inline, or an awaitable of a :class:`Response`.
        """
        # The hot path of every replica: admission and the handler call inlined (the
        # common case is a plain handler returning bytes).
        entry = self.commands.get((namespace, name))
        if inbound:
            if entry is None:
                return self._inbound_other(
                    source, namespace, name, key, payload, partition, hint, timeout
                )
            membership = self._membership
            if membership.suspects or membership.downs:  # else inbound has nothing to do
                sync = self.sync
                assert sync is not None
                sync.inbound(source)
            if not self.accepting:
                return self._stopping()
        elif entry is None:
            return Response(Status.UNKNOWN_COMMAND, b"", str(self.unknown(namespace, name)))
        command = entry.command
        local = source == self._address
        ctx: CommandContext | None = None  # set below when a shared one applies
        if command.reads or command.mutates:
            sync = self.sync
            assert sync is not None
            forwarded = bool(hint) and hint != self._address
            if forwarded and command.hinted:
                return sync.store_hint(Request(namespace, name, key, payload, partition, hint))
            if key:  # batch-style commands (no key) check their keys with partition_ready
                # A peer's partition is recomputed (it may be wrong); our own is not.
                if not local:  # Ring.partition_for_key inline (one call per request)
                    partition = _fingerprint64(key) % self._membership._ring._partitions
                # SyncManager.readable / note_write inline (see SyncManager.table): a
                # partition being pulled is not readable, and a write needs note_write only
                # while its partition is pulled or neither replicated nor held here.
                table = sync.table
                if command.reads:
                    if forwarded:
                        if not sync.holds(partition):
                            return self._not_ready(partition)
                    elif partition in table.pending:
                        ctx = CommandContext(source, partition, hint, local)
                        return self._invoke_when_ready(
                            entry.handler, ctx, key, payload, partition, timeout
                        )
                if command.mutates and (
                    partition in table.pending
                    or (partition not in table.replicated and partition not in table.held)
                ):
                    sync.note_write(partition)
                if not hint:
                    # Frozen and equal for every request of this source and partition: one
                    # per pair (at most partitions x members) instead of one per request.
                    by_source = self._contexts.get(source)
                    ctx = None if by_source is None else by_source.get(partition)
                    if ctx is None:
                        ctx = self._context(source, partition, local)
        if ctx is None:
            ctx = CommandContext(source, partition, hint, local)
        try:
            out = entry.handler(ctx, key, payload)
        except Exception as exc:
            return error_response(exc)
        if type(out) is bytes:
            return out
        return self._result(out, timeout)

    def _context(self, source: str, partition: int, local: bool) -> CommandContext:
        """The shared context of keyed commands without a hint from ``source`` for
        ``partition`` (see ``dispatch``), made on first use."""
        by_source = self._contexts.get(source)
        if by_source is None:
            if len(self._contexts) >= _MAX_CONTEXT_SOURCES:
                self._contexts.clear()  # members came and went: start over
            by_source = self._contexts[source] = {}
        ctx = by_source.get(partition)
        if ctx is None:
            ctx = by_source[partition] = CommandContext(source, partition, "", local)
        return ctx

    def invoke(
        self, handler: Handler, ctx: CommandContext, key: bytes, payload: bytes, timeout: float
    ) -> Response | Awaitable[Response]:
        """Call ``handler``; validate its result and map its error to a status."""
        try:
            out = handler(ctx, key, payload)
        except Exception as exc:
            return error_response(exc)
        if type(out) is bytes:
            return Response(_OK, out, "")
        return self._result(out, timeout)

    def _result(self, out: object, timeout: float) -> Response | Awaitable[Response]:
        """A handler's result other than ``bytes``: converted, awaited, or refused."""
        if isinstance(out, bytearray | memoryview):
            return Response(_OK, bytes(out), "")
        if inspect.isawaitable(out):
            return self._await(out, timeout or self._request_timeout)
        return error_response(TypeError(f"handler returned {type(out).__name__}, not bytes"))

    def _await(self, out: Awaitable[object], timeout: float) -> asyncio.Future[Response]:
        # The handler's coroutine becomes a task at once, not when the caller gets round to
        # awaiting: a caller that drops the answer (its stream closed meanwhile) must not
        # leave the coroutine "never awaited". The task is bounded by the timeout either
        # way, and cancelling the returned future cancels it.
        task = asyncio.ensure_future(out)
        answer: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        # The node's clock, not the loop's, bounds the handler (fake clocks in tests).
        timer = self._clock.call_later(timeout, expire)

        def finished(t: asyncio.Future[object]) -> None:
            timer.cancel()
            if answer.done():
                return
            if t.cancelled():
                if expired:
                    answer.set_result(
                        error_response(
                            RequestTimeoutError(
                                f"handler on {self._address} timed out after {timeout:g}s"
                            )
                        )
                    )
                else:
                    answer.cancel()
                return
            exc = t.exception()
            if exc is not None:
                answer.set_result(error_response(exc))
                return
            result = t.result()
            if type(result) is bytes:
                answer.set_result(Response(_OK, result, ""))
            elif isinstance(result, bytearray | memoryview):
                answer.set_result(Response(_OK, bytes(result), ""))
            else:
                answer.set_result(
                    error_response(
                        TypeError(f"handler returned {type(result).__name__}, not bytes")
                    )
                )

        def abandoned(f: asyncio.Future[Response]) -> None:
            if f.cancelled() and not task.done():
                task.cancel()

        task.add_done_callback(finished)
        answer.add_done_callback(abandoned)
        return answer

    def _not_ready(self, partition: int) -> Response:
        err = PartitionNotReadyError(self._address, partition)
        return Response(Status.UNAVAILABLE, b"", err.reason)

    def read_wait(self, timeout: float) -> float:
        """How long a read waits for a partition being pulled before it is refused."""
        timeout = timeout or self._request_timeout
        return min(timeout * _READ_WAIT_SHARE, _READ_WAIT_MAX)

    async def _invoke_when_ready(
        self,
        handler: Handler,
        ctx: CommandContext,
        key: bytes,
        payload: bytes,
        partition: int,
        timeout: float,
    ) -> Response:
        sync = self.sync
        assert sync is not None
        if not await sync.wait_readable(partition, self.read_wait(timeout)):
            return self._not_ready(partition)
        out = self.invoke(handler, ctx, key, payload, timeout)
        return out if isinstance(out, Response) else await out

    async def local_write(self, namespace: str, name: str, key: bytes, payload: bytes) -> None:
        """Apply a write on this node (a hint redirected here because its target is gone).

        Raises:
            PeerRingError: the typed error of the failure (the same mapping as remotely).
        """
        entry = self.commands.get((namespace, name))
        if entry is None:
            raise self.unknown(namespace, name)
        partition = self._membership.ring.partition_for_key(key)
        sync = self.sync
        assert sync is not None
        sync.note_write(partition)
        ctx = CommandContext(self._address, partition, "", True)
        out = self.invoke(entry.handler, ctx, key, payload, self._request_timeout)
        response = out if isinstance(out, Response) else await out
        if response.status != _OK:
            raise error_for_status(Status(response.status), response.error, self._address)


def _as_response(out: bytes | Response | Awaitable[Response]) -> Response | Awaitable[Response]:
    """``dispatch``'s answer with a success's bytes as a :class:`Response`."""
    return Response(_OK, out, "") if isinstance(out, bytes) else out


def error_response(exc: BaseException) -> Response:
    """The response carrying a handler's error (its wire status and message)."""
    if not isinstance(exc, InvalidArgumentError | UnknownCommandError):
        logger.debug("handler failed", exc_info=exc)
    return Response(status_for_error(exc), b"", f"{type(exc).__name__}: {exc}")


async def _gather_batch(outs: list[Response | Awaitable[Response]]) -> Response:
    # Awaitables of one batch run concurrently, each bounded by its own timeout; they
    # return a Response for every outcome (errors included), so gather cannot fail.
    waits = [o for o in outs if not isinstance(o, Response)]
    done = iter(await asyncio.gather(*waits))
    results = [o if isinstance(o, Response) else next(done) for o in outs]
    return Response(_OK, encode_results(results), "")
