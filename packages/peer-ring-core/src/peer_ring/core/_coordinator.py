"""The coordinator: ``execute``, ``execute_many``, ``send`` and ``call`` (Dynamo §4.5).

Any node can coordinate an operation: it computes the key's preference list, runs the
command locally when it is a replica (through the dispatcher, like any peer would), sends
it to the other replicas and returns once ``quorum`` of them succeeded. It creates no
asyncio Task per operation: replies reach the operation from the transport's reader, and
the operation counts them itself (see :mod:`._operation`, :mod:`._quorum`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING, Any

from peer_ring.core._clock import Clock, SystemClock
from peer_ring.core._command import Command
from peer_ring.core._config import PeerRingConfig, check_replication
from peer_ring.core._dispatcher import Dispatcher
from peer_ring.core._errors import (
    InvalidArgumentError,
    NotRunningError,
    QuorumNotReachedError,
)
from peer_ring.core._membership import Membership
from peer_ring.core._operation import BatchSender, Operation
from peer_ring.core._result import ExecuteResult, Reply
from peer_ring.core._ring import Ring, _fingerprint64
from peer_ring.core._status import error_for_status
from peer_ring.core._types import Request, Response, Status
from peer_ring.core.transport._deadlines import DeadlineWheel

if TYPE_CHECKING:
    from peer_ring.core._sync import SyncManager
    from peer_ring.core.transport._base import Transport

logger = logging.getLogger(__name__)

#: ``Status.OK`` read once: the attribute lookup on the enum class costs about 0.1 us,
#: and the request path compares or builds an OK status several times per operation.
_OK = Status.OK

#: A batch frame carries at most this share of the transport's message limit (the rest is
#: headroom for framing), and at most _FRAME_BUDGET_MAX bytes so one huge batch does not
#: hold a peer's stream for long.
_FRAME_SHARE = 0.5
_FRAME_BUDGET_MAX = 4 << 20

#: Makes an object without calling its ``__init__`` (the ExecuteResult of ``execute``).
_new_object = object.__new__

#: Distinct explicit (replication, quorum) pairs remembered as valid by ``execute``.
_MAX_CHECKED_SIZES = 64


def _key_bytes(key: bytes | str) -> bytes:
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, bytes):
        return key
    raise InvalidArgumentError(f"keys are str or bytes, not {type(key).__name__}")


def _no_look() -> None:
    """A coordinator without a node never looks for a tracer provider."""


class Coordinator:
    """Runs operations for one node (the state it needs is the node's, shared)."""

    def __init__(
        self,
        address: str,
        config: PeerRingConfig,
        membership: Membership,
        transport: Transport,
        dispatcher: Dispatcher,
        sync: SyncManager,
        clock: Clock | None = None,
    ) -> None:
        self.address = address
        self.config = config
        self.membership = membership
        self.transport = transport
        self.dispatcher = dispatcher
        self.sync = sync
        self._running = False
        # The event loop of the node's operations, found by the first operation after each
        # start or stop (see ``running``; Operation reads it): asyncio.get_running_loop()
        # costs a getpid() system call per call on Python 3.11 (0.7-1 us here).
        self.loop: asyncio.AbstractEventLoop | None = None
        self.previous_ring: Ring | None = None
        self.clock: Clock = clock or SystemClock()
        self.sent = 0
        self.send_failures = 0
        # Reads sent only to a quorum of replicas (read_fanout="quorum"): how many asked
        # one more replica because one was slow (speculative) or refused / failed.
        self.quorum_reads = config.read_fanout == "quorum"
        self.speculate_after = config.read_speculate_after
        self.speculative_reads = 0
        self.read_retries = 0
        self.speculation = DeadlineWheel(self.clock)
        # Operations that missed their quorum, by namespace (metrics); counted on the
        # failure path only.
        self.quorum_failures: dict[str, int] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        self._default_sizes = (config.replication, config.quorum_for(config.replication))
        # (replication, quorum) as passed -> (n, q), for pairs that passed _sizes' checks.
        self._checked_sizes: dict[tuple[int | None, int | None], tuple[int, int]] = {}
        limit = config.transport_limits.max_message_bytes
        self._frame_budget = max(1024, min(int(limit * _FRAME_SHARE), _FRAME_BUDGET_MAX))
        # While tracing is off, PeerRing.execute is this object's execute (see
        # PeerRing._look_for_tracing): the look for a tracer provider every so many
        # operations happens here. Operations left before the next look; -1: no looks.
        self.untraced_left = -1
        self.look_for_tracing: Callable[[], None] = _no_look

    @property
    def running(self) -> bool:
        """Whether the node accepts operations (the node sets it on start and stop)."""
        return self._running

    @running.setter
    def running(self, value: bool) -> None:
        self._running = value
        self.loop = None  # a node started again may run under another event loop

    def track(self, task: asyncio.Future[Any]) -> None:
        """Keep a reference to a local handler run until it ends."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def resolve(self, namespace: str, command: Command | str) -> Command:
        """The declaration to coordinate ``command`` with.

        A name resolves to the command registered here (or a plain command when this node
        did not register it); a :class:`Command` must match the registered one.
        """
        if isinstance(command, Command):
            registered = self.dispatcher.declaration(namespace, command.name)
            if registered is command:  # the common case: the object that was registered
                return command
            if registered is not None and registered != command:
                raise InvalidArgumentError(
                    f"{namespace}/{command.name} is registered as {registered}, not {command}"
                )
            return command
        if isinstance(command, str):
            registered = self.dispatcher.declaration(namespace, command)
            return registered if registered is not None else Command(command)
        kind = type(command).__name__
        raise InvalidArgumentError(f"a command is a Command or a name, not {kind}")

    def _check_running(self) -> None:
        if not self._running:
            raise NotRunningError(f"node {self.address} is not running")

    def _sizes(self, replication: int | None, quorum: int | None) -> tuple[int, int]:
        cfg = self.config
        n = cfg.replication if replication is None else replication
        check_replication(n, quorum)
        return n, cfg.quorum_for(n) if quorum is None else quorum

    async def execute(
        self,
        namespace: str,
        command: Command | str,
        key: bytes | str,
        payload: bytes = b"",
        *,
        replication: int | None = None,
        quorum: int | None = None,
        timeout: float | None = None,
    ) -> ExecuteResult:
        """See ``PeerRing.execute`` (the same signature: while tracing is off, it *is*
        ``PeerRing.execute``)."""
        # The hot path of every application: the common cases are inlined (registered
        # Command object, default sizes, bytes key).
        left = self.untraced_left
        if left > 0:
            self.untraced_left = left - 1
        elif not left:
            self.look_for_tracing()
        if not self._running:
            raise NotRunningError(f"node {self.address} is not running")
        entry = self.dispatcher.commands.get(
            (namespace, command.name if type(command) is Command else "")
        )
        decl = command if entry is not None and entry.command is command else None
        if decl is None:
            decl = self.resolve(namespace, command)
        if replication is None and quorum is None:
            n, q = self._default_sizes
        else:
            # Applications pass the same few explicit sizes again and again: each pair is
            # validated once. Only exact ints are remembered (3.0 == 3 but is refused).
            exact = type(replication) is int or replication is None
            if exact and (type(quorum) is int or quorum is None):
                sizes = self._checked_sizes.get((replication, quorum))
                if sizes is None:
                    sizes = self._sizes(replication, quorum)
                    if len(self._checked_sizes) < _MAX_CHECKED_SIZES:
                        self._checked_sizes[(replication, quorum)] = sizes
                n, q = sizes
            else:
                n, q = self._sizes(replication, quorum)
        key_b = key if type(key) is bytes else _key_bytes(key)
        ring = self.membership._ring  # the ring property's value, without its call
        # Ring.partition_for_key and Ring.preference_list inline (two calls per operation):
        # the partition is in range by construction, and the lists of n are cached after
        # the first lookup (_lists_for checks n and fills the cache).
        partition = _fingerprint64(key_b) % ring._partitions
        lists = ring._lists.get(n)
        if lists is None:
            lists = ring._lists_for(n)
        prefs = lists[partition]
        # ExecuteResult's __init__ inline (no Python call; the same fields).
        result = _new_object(ExecuteResult)
        result.key = key_b
        result.partition = partition
        result.preference_list = prefs
        result.replies = []
        result.error = None
        result._complete = False
        result._callbacks = None
        if len(prefs) < q:
            self.quorum_failed(namespace)
            raise _too_few(namespace, decl.name, q, len(prefs))
        wait = self.config.request_timeout if timeout is None else timeout
        me = self.address
        if len(prefs) == 1 and prefs[0] == me:
            # The fast path for a key only this node replicates (replication 1 on an owned
            # key): the handler runs inline and a success returns with no Operation (no
            # future). Anything else (an error to forward or count, an
            # awaitable handler) goes to the general machinery below with this outcome.
            out = self.dispatcher.dispatch(
                me, namespace, decl.name, key_b, payload, partition, "", wait
            )
            if type(out) is bytes:
                result.replies.append(Reply(me, out, None))
                result._complete = True  # _finish, without its call: no callbacks yet
                return result
            op = Operation(
                self, ring, namespace, decl, key_b, payload, partition, n, wait, q, result
            )
            op.used = prefs
            op.take_local("", out)
        else:
            op = Operation(
                self, ring, namespace, decl, key_b, payload, partition, n, wait, q, result
            )
            op.start(prefs)
        try:
            return await op.future
        except QuorumNotReachedError:
            self.quorum_failed(namespace)
            raise

    def quorum_failed(self, namespace: str) -> None:
        """Count one operation that missed its quorum (for metrics)."""
        failures = self.quorum_failures
        failures[namespace] = failures.get(namespace, 0) + 1

    async def execute_many(
        self,
        namespace: str,
        command: Command | str,
        items: Iterable[tuple[bytes | str, bytes]],
        replication: int | None,
        quorum: int | None,
        timeout: float | None,
    ) -> list[ExecuteResult]:
        """See ``PeerRing.execute_many``."""
        self._check_running()
        decl = self.resolve(namespace, command)
        n, q = self._sizes(replication, quorum)
        pairs = [(_key_bytes(k), p) for k, p in items]
        for _, payload in pairs:
            if not isinstance(payload, bytes):
                raise InvalidArgumentError(f"payloads are bytes, not {type(payload).__name__}")
        loop = asyncio.get_running_loop()
        ring = self.membership.ring
        wait = self.config.request_timeout if timeout is None else timeout
        sender = BatchSender(self, namespace, decl.name, self._frame_budget)
        results: list[ExecuteResult] = []
        all_done: asyncio.Future[None] = loop.create_future()
        remaining = 0

        def key_done(result: ExecuteResult, fut: asyncio.Future[ExecuteResult]) -> None:
            nonlocal remaining
            exc = fut.exception()  # also marks it retrieved
            if exc is not None:
                result.error = exc
                if isinstance(exc, QuorumNotReachedError):
                    self.quorum_failed(namespace)
            remaining -= 1
            if remaining == 0 and not all_done.done():
                all_done.set_result(None)

        for key_b, payload in pairs:
            partition = ring.partition_for_key(key_b)
            prefs = ring.preference_list(partition, n)
            result = ExecuteResult(partition, prefs, key_b)
            results.append(result)
            if len(prefs) < q:
                self.quorum_failed(namespace)
                result.error = _too_few(namespace, decl.name, q, len(prefs))
                result._finish()
                continue
            op = Operation(
                self, ring, namespace, decl, key_b, payload, partition, n, wait, q, result, sender
            )
            remaining += 1
            op.future.add_done_callback(functools.partial(key_done, result))
            op.start(prefs)
        sender.flush()
        if remaining:
            await all_done
        return results

    def send(
        self,
        namespace: str,
        command: Command | str,
        key: bytes | str,
        payload: bytes,
        replication: int,
        nodes: Collection[str] | None,
    ) -> None:
        """See ``PeerRing.send``."""
        decl = self.resolve(namespace, command)
        key_b = _key_bytes(key)
        if not self.running:
            self.send_failures += 1
            logger.debug("send %s/%s dropped: %s not running", namespace, decl.name, self.address)
            return
        ring = self.membership.ring
        partition = ring.partition_for_key(key_b)
        if nodes is None:
            check_replication(replication, None)
            targets: Collection[str] = ring.preference_list(partition, replication)
        else:
            targets = nodes
        timeout = self.config.request_timeout
        for target in targets:
            self.sent += 1
            if target == self.address:
                out = self.dispatcher.dispatch(
                    target, namespace, decl.name, key_b, payload, partition, "", timeout
                )
                if isinstance(out, bytes):
                    continue  # a success
                if isinstance(out, Response):
                    self._sent(target, out)
                else:
                    task = asyncio.ensure_future(out)
                    self.track(task)
                    task.add_done_callback(functools.partial(self._sent_future, target))
                continue
            request = Request(namespace, decl.name, key_b, payload, partition, "", timeout)
            fut = self.transport.request(target, request)
            fut.add_done_callback(functools.partial(self._sent_future, target))

    def _sent_future(self, target: str, fut: asyncio.Future[Response]) -> None:
        if fut.cancelled():
            self.send_failures += 1
            return
        exc = fut.exception()
        if exc is not None:
            self.send_failures += 1
            logger.debug("send to %s failed: %s", target, exc)
            return
        self._sent(target, fut.result())

    def _sent(self, target: str, response: Response) -> None:
        if response.status != _OK:
            self.send_failures += 1
            logger.debug("send to %s failed: %s", target, response.error)

    async def call(
        self,
        node: str,
        namespace: str,
        command: Command | str,
        key: bytes | str,
        payload: bytes,
        timeout: float | None,
    ) -> bytes:
        """See ``PeerRing.call``."""
        self._check_running()
        decl = self.resolve(namespace, command)
        key_b = _key_bytes(key)
        partition = self.membership.ring.partition_for_key(key_b) if key_b else 0
        wait = self.config.request_timeout if timeout is None else timeout
        if node == self.address:
            out = self.dispatcher.dispatch(
                node, namespace, decl.name, key_b, payload, partition, "", wait
            )
            if isinstance(out, bytes):
                return out
            response = out if isinstance(out, Response) else await out
        else:
            request = Request(namespace, decl.name, key_b, payload, partition, "", wait)
            response = await self.transport.request(node, request)
        if response.status != _OK:
            raise error_for_status(Status(response.status), response.error, node)
        return response.payload


def _too_few(namespace: str, name: str, quorum: int, members: int) -> QuorumNotReachedError:
    return QuorumNotReachedError(
        namespace,
        name,
        quorum,
        [],
        {"cluster": InvalidArgumentError(f"only {members} member(s) for quorum {quorum}")},
    )
