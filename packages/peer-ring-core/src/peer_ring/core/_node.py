"""``PeerRing``: one node of the cluster — handlers, the coordinator and the lifecycle.

The coordinator follows Dynamo §4.5: any node can coordinate an operation; it computes the
key's preference list, runs the command locally when it is a replica, sends it to the
other replicas, and returns once ``quorum`` of them succeeded. It creates no asyncio Task
per operation: remote replies resolve futures whose callbacks feed a
:class:`~peer_ring.core._quorum.QuorumCollector`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from types import TracebackType
from typing import TYPE_CHECKING

from peer_ring.core._clock import Clock, SystemClock
from peer_ring.core._config import PeerRingConfig, check_replication
from peer_ring.core._discovery import Discovery
from peer_ring.core._errors import (
    InvalidArgumentError,
    NotRunningError,
    QuorumNotReachedError,
    RequestTimeoutError,
    UnknownCommandError,
)
from peer_ring.core._hooks import DataHooks
from peer_ring.core._membership import Membership, RingListener
from peer_ring.core._quorum import QuorumCollector
from peer_ring.core._result import CommandContext, ExecuteResult, Reply
from peer_ring.core._ring import Ring
from peer_ring.core._status import error_for_status, status_for_error
from peer_ring.core._types import Member, Request, Response, Status, TransferRequest

if TYPE_CHECKING:
    from peer_ring.core.transport._base import Transport

logger = logging.getLogger(__name__)

#: A command handler: ``handler(ctx, key, payload) -> result bytes``. Plain functions run
#: inline (fastest: no Task); coroutine functions are awaited.
Handler = Callable[[CommandContext, bytes, bytes], bytes | Awaitable[bytes]]

#: Records are moved in chunks of at most this many bytes (well under the message limit).
_TRANSFER_CHUNK_BYTES = 1 << 20


class PeerRing:
    """A peer-ring node.

    Args:
        discovery: where the member set comes from; its ``self_address`` is this node's
            identity and the address its transport listens on.
        config: partitions, default replication/quorum, timeouts and limits.
        transport: how to reach peers; defaults to gRPC on ``discovery.self_address``.
        clock: time source (inject ``peer_ring.core.testing.FakeClock`` in tests).

    Example:
        >>> async with PeerRing(StaticDiscovery(peers, self_address=me)) as node:  # doctest: +SKIP
        ...     node.register("echo", "say", lambda ctx, key, payload: payload)
        ...     result = await node.execute("echo", "say", b"k", b"hi", replication=3, quorum=2)
    """

    def __init__(
        self,
        discovery: Discovery,
        *,
        config: PeerRingConfig | None = None,
        transport: Transport | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._config = config or PeerRingConfig()
        self._clock: Clock = clock or SystemClock()
        self._discovery = discovery
        self._address = discovery.self_address
        if transport is None:
            from peer_ring.core.transport import GrpcTransport

            transport = GrpcTransport(
                self._address,
                limits=self._config.transport_limits,
                token=self._config.token,
                clock=self._clock,
            )
        if transport.address != self._address:
            raise InvalidArgumentError(
                f"transport address {transport.address} differs from discovery's "
                f"self_address {self._address}"
            )
        self._transport = transport
        self._membership = Membership(
            self._address, self._config.partitions, self._clock, self._config.suspicion_timeout
        )
        self._handlers: dict[tuple[str, str], Handler] = {}
        self._hooks: dict[str, DataHooks] = {}
        self._watch_task: asyncio.Task[None] | None = None
        self._running = False
        self._started = asyncio.Event()
        self._transport.add_reachability_listener(self._on_reachability)

    # -- properties --------------------------------------------------------------------

    @property
    def address(self) -> str:
        """This node's ``host:port`` identity."""
        return self._address

    @property
    def config(self) -> PeerRingConfig:
        """The node's configuration."""
        return self._config

    @property
    def clock(self) -> Clock:
        """The node's clock."""
        return self._clock

    @property
    def ring(self) -> Ring:
        """The ring of the current member view."""
        return self._membership.ring

    @property
    def members(self) -> dict[str, Member]:
        """Current members by address."""
        return self._membership.members

    @property
    def membership(self) -> Membership:
        """The membership view (members, ring, suspicion)."""
        return self._membership

    @property
    def transport(self) -> Transport:
        """The transport this node uses."""
        return self._transport

    @property
    def running(self) -> bool:
        """True between ``start()`` and ``stop()``."""
        return self._running

    # -- registration ------------------------------------------------------------------

    def register(self, namespace: str, command: str, handler: Handler) -> None:
        """Register ``handler`` for ``(namespace, command)`` on this node.

        Every node of the cluster must register the same commands (they are called on
        whichever node replicates the key). Plain functions run inline on the transport's
        reader (keep them fast and non-blocking); coroutine functions run in a task.

        Raises:
            InvalidArgumentError: empty names, or the pair is already registered.
        """
        if not namespace or not command:
            raise InvalidArgumentError("namespace and command must be non-empty strings")
        if (namespace, command) in self._handlers:
            raise InvalidArgumentError(f"{namespace}/{command} is already registered")
        self._handlers[(namespace, command)] = handler

    def register_hooks(self, namespace: str, hooks: DataHooks) -> None:
        """Register the data-movement hooks of ``namespace`` (see :class:`DataHooks`)."""
        if namespace in self._hooks:
            raise InvalidArgumentError(f"hooks for {namespace!r} are already registered")
        self._hooks[namespace] = hooks

    def hooks(self, namespace: str) -> DataHooks | None:
        """The data-movement hooks registered for ``namespace``."""
        return self._hooks.get(namespace)

    def add_ring_listener(self, listener: RingListener) -> None:
        """Call ``listener(old_ring, new_ring)`` whenever the member set changes."""
        self._membership.add_listener(listener)

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start the transport and discovery and join the ring.

        Raises:
            OSError: the listen address cannot be bound.
        """
        if self._running:
            return
        await self._transport.start(self._on_request, self._on_transfer)
        try:
            members = await self._discovery.start()
        except BaseException:
            await self._transport.close()
            raise
        self._membership.update(members)
        self._running = True
        self._watch_task = asyncio.create_task(
            self._watch_discovery(), name=f"peer-ring-discovery-{self._address}"
        )
        self._started.set()
        logger.info("node %s started with %d members", self._address, len(self._membership.members))

    async def stop(self) -> None:
        """Stop discovery and the transport. Idempotent."""
        if not self._running:
            return
        self._running = False
        await self._discovery.stop()
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
            self._watch_task = None
        await self._transport.close()
        logger.info("node %s stopped", self._address)

    async def __aenter__(self) -> PeerRing:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _watch_discovery(self) -> None:
        try:
            async for members in self._discovery.watch():
                self._membership.update(members)
        except asyncio.CancelledError:
            raise
        except Exception:  # a broken discovery must not silently freeze the view
            logger.exception("discovery watch of %s failed; member view frozen", self._address)

    def _on_reachability(self, peer: str, reachable: bool) -> None:
        if reachable:
            self._membership.clear(peer)
        else:
            self._membership.suspect(peer)

    # -- coordination ------------------------------------------------------------------

    def preference_list(self, key: bytes | str, replication: int | None = None) -> tuple[str, ...]:
        """The replicas of ``key`` in preference order (owner first)."""
        ring = self._membership.ring
        n = replication or self._config.replication
        return ring.preference_list(ring.partition_for_key(key), n)

    def is_replica(self, key: bytes | str, replication: int | None = None) -> bool:
        """True when this node is one of the ``replication`` replicas of ``key``."""
        return self._address in self.preference_list(key, replication)

    async def execute(
        self,
        namespace: str,
        command: str,
        key: bytes | str,
        payload: bytes = b"",
        *,
        replication: int | None = None,
        quorum: int | None = None,
        timeout: float | None = None,
    ) -> ExecuteResult:
        """Run a command on the replicas of ``key`` and wait for a quorum.

        Args:
            namespace: the application namespace the command belongs to.
            command: the registered command name.
            key: the key (``str`` is UTF-8 encoded); it selects the replicas.
            payload: opaque bytes passed to the handlers.
            replication: number of replicas N (default from the config).
            quorum: successful replies needed (default: the config's, or a majority).
            timeout: seconds before unanswered replicas count as failed.

        Returns:
            An :class:`ExecuteResult` with at least ``quorum`` successful replies; slower
            replicas' replies keep arriving in it (``on_complete``/``all_replies``).

        Raises:
            InvalidArgumentError: bad replication/quorum (e.g. quorum > replication).
            QuorumNotReachedError: too few replicas succeeded; names the failed replicas
                and their errors (unknown command, timeout, unreachable...).
            NotRunningError: the node is not started.
        """
        if not self._running:
            raise NotRunningError(f"node {self._address} is not running")
        cfg = self._config
        n = cfg.replication if replication is None else replication
        check_replication(n, quorum)
        q = cfg.quorum_for(n) if quorum is None else quorum
        key_b = key.encode() if isinstance(key, str) else key
        ring = self._membership.ring
        partition = ring.partition_for_key(key_b)
        prefs = ring.preference_list(partition, n)
        result = ExecuteResult(partition, prefs)
        if len(prefs) < q:
            raise QuorumNotReachedError(
                namespace,
                command,
                q,
                [],
                {"cluster": InvalidArgumentError(f"only {len(prefs)} member(s) for quorum {q}")},
            )
        loop = asyncio.get_running_loop()
        collector = QuorumCollector(loop, namespace, command, result, q)
        wait = cfg.request_timeout if timeout is None else timeout
        local = False
        for node in prefs:
            if node == self._address:
                local = True
                continue
            fut = self._transport.request(
                node, Request(namespace, command, key_b, payload, partition, "", wait)
            )
            fut.add_done_callback(_reply_callback(collector, node))
        if local:
            self._run_local(collector, namespace, command, key_b, payload, partition, wait)
        return await collector.future

    def _run_local(
        self,
        collector: QuorumCollector,
        namespace: str,
        command: str,
        key: bytes,
        payload: bytes,
        partition: int,
        timeout: float,
    ) -> None:
        handler = self._handlers.get((namespace, command))
        if handler is None:
            collector.add(Reply(self._address, b"", self._unknown(namespace, command)))
            return
        ctx = CommandContext(self._address, partition, "", True)
        try:
            out = handler(ctx, key, payload)
            if not inspect.isawaitable(out):
                collector.add(Reply(self._address, _as_bytes(out), None))
                return
        except Exception as exc:
            collector.add(Reply(self._address, b"", exc))
            return
        task = asyncio.ensure_future(out)
        timer = self._clock.call_later(timeout, task.cancel)

        def done(t: asyncio.Future[bytes]) -> None:
            timer.cancel()
            if t.cancelled():
                err: BaseException = RequestTimeoutError(
                    f"{namespace}/{command} on {self._address} timed out after {timeout:g}s"
                )
                collector.add(Reply(self._address, b"", err))
            elif (exc := t.exception()) is not None:
                collector.add(Reply(self._address, b"", exc))
            else:
                collector.add(Reply(self._address, _as_bytes(t.result()), None))

        task.add_done_callback(done)

    async def call(
        self,
        node: str,
        namespace: str,
        command: str,
        key: bytes | str = b"",
        payload: bytes = b"",
        *,
        timeout: float | None = None,
    ) -> bytes:
        """Run a command on one specific node (for batched or node-level operations).

        Raises the typed error of the failure (``PeerUnavailableError``,
        ``RequestTimeoutError``, ``UnknownCommandError``, ``RemoteError``...).
        """
        if not self._running:
            raise NotRunningError(f"node {self._address} is not running")
        key_b = key.encode() if isinstance(key, str) else key
        partition = self._membership.ring.partition_for_key(key_b) if key_b else 0
        wait = self._config.request_timeout if timeout is None else timeout
        if node == self._address:
            handler = self._handlers.get((namespace, command))
            if handler is None:
                raise self._unknown(namespace, command)
            out = handler(CommandContext(self._address, partition, "", True), key_b, payload)
            if inspect.isawaitable(out):
                return _as_bytes(await asyncio.wait_for(out, wait))
            return _as_bytes(out)
        response = await self._transport.request(
            node, Request(namespace, command, key_b, payload, partition, "", wait)
        )
        if response.status is not Status.OK:
            raise error_for_status(Status(response.status), response.error, node)
        return response.payload

    async def transfer(
        self,
        node: str,
        namespace: str,
        partition: int,
        buckets: Collection[int] = (),
    ) -> AsyncIterator[list[bytes]]:
        """Stream the records ``node`` exports for one partition (bulk data movement)."""
        request = TransferRequest(namespace, partition, tuple(sorted(buckets)))
        async for chunk in self._transport.transfer(node, request, self._config.transfer_timeout):
            yield chunk

    # -- inbound -----------------------------------------------------------------------

    def _unknown(self, namespace: str, command: str) -> UnknownCommandError:
        return UnknownCommandError(f"unknown command {namespace}/{command} on {self._address}")

    def _on_request(self, source: str, request: Request) -> Response | Awaitable[Response]:
        handler = self._handlers.get((request.namespace, request.command))
        if handler is None:
            return Response(
                Status.UNKNOWN_COMMAND,
                b"",
                str(self._unknown(request.namespace, request.command)),
            )
        ctx = CommandContext(source, request.partition, request.hint, False)
        try:
            out = handler(ctx, request.key, request.payload)
        except Exception as exc:
            return _error_response(exc)
        if type(out) is bytes:
            return Response(Status.OK, out, "")
        if inspect.isawaitable(out):
            return _await_response(out)
        return _error_response(TypeError(f"handler returned {type(out).__name__}, not bytes"))

    async def _on_transfer(
        self, source: str, request: TransferRequest
    ) -> AsyncIterator[list[bytes]]:
        hooks = self._hooks.get(request.namespace)
        if hooks is None:
            raise UnknownCommandError(
                f"no data hooks for namespace {request.namespace!r} on {self._address}"
            )
        if not 0 <= request.partition < self._config.partitions:
            raise InvalidArgumentError(f"partition {request.partition} out of range")
        chunk: list[bytes] = []
        size = 0
        for record in hooks.export_partition(request.partition, request.buckets or None):
            chunk.append(record)
            size += len(record)
            if size >= _TRANSFER_CHUNK_BYTES:
                yield chunk
                chunk, size = [], 0
                await asyncio.sleep(0)  # let the node serve requests between chunks
        if chunk:
            yield chunk


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"handler returned {type(value).__name__}, not bytes")


def _error_response(exc: BaseException) -> Response:
    if not isinstance(exc, InvalidArgumentError | UnknownCommandError):
        logger.debug("handler failed", exc_info=exc)
    return Response(status_for_error(exc), b"", f"{type(exc).__name__}: {exc}")


async def _await_response(out: Awaitable[bytes]) -> Response:
    try:
        return Response(Status.OK, _as_bytes(await out), "")
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return _error_response(exc)


def _reply_callback(
    collector: QuorumCollector, node: str
) -> Callable[[asyncio.Future[Response]], None]:
    def on_done(fut: asyncio.Future[Response]) -> None:
        if fut.cancelled():
            collector.add(Reply(node, b"", RequestTimeoutError(f"request to {node} cancelled")))
            return
        exc = fut.exception()
        if exc is not None:
            collector.add(Reply(node, b"", exc))
            return
        response = fut.result()
        if response.status == Status.OK:
            collector.add(Reply(node, response.payload, None))
        else:
            collector.add(
                Reply(node, b"", error_for_status(Status(response.status), response.error, node))
            )

    return on_done
