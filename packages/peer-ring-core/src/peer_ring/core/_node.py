"""``PeerRing``: one node of the cluster — handlers, the coordinator and the lifecycle.

The coordinator follows Dynamo §4.5: any node can coordinate an operation; it computes the
key's preference list, runs the command locally when it is a replica, sends it to the
other replicas, and returns once ``quorum`` of them succeeded. It creates no asyncio Task
per operation: remote replies resolve futures whose callbacks feed a
:class:`~peer_ring.core._quorum.QuorumCollector`.

Two refinements keep quorums meaningful while data moves (``docs/data-movement.md``):

* **sloppy quorum** (Dynamo §4.6) for commands registered with ``kind="write"``: a
  preferred replica that is suspected (or that fails) is replaced by the next healthy node
  of the ring walk, which stores the write as a *hint* and hands it over later;
* **read forwarding** for ``kind="read"``: a replica still pulling the key's partition
  answers "not ready" instead of "not found", and the coordinator asks the partition's
  previous holders (which keep it until the handoff is confirmed) in its place.

Data movement itself (initial sync, rebalancing, handoff, anti-entropy, failure detection)
is driven by :class:`~peer_ring.core._sync.SyncManager`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from peer_ring.core._clock import Clock, SystemClock
from peer_ring.core._config import PeerRingConfig, check_replication
from peer_ring.core._discovery import Discovery
from peer_ring.core._errors import (
    InvalidArgumentError,
    NotRunningError,
    PeerUnavailableError,
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
from peer_ring.core._sync import INTERNAL, LeaveReport, PartitionNotReadyError, SyncManager
from peer_ring.core._types import Member, Request, Response, Status, TransferRequest

if TYPE_CHECKING:
    from peer_ring.core.transport._base import Transport

logger = logging.getLogger(__name__)

#: A command handler: ``handler(ctx, key, payload) -> result bytes``. Plain functions run
#: inline (fastest: no Task); coroutine functions are awaited.
Handler = Callable[[CommandContext, bytes, bytes], bytes | Awaitable[bytes]]

#: What a command does to the data, declared at registration (``register(..., kind=)``):
#: ``"read"`` commands are refused by a replica that is still pulling the key's partition
#: (so that an empty new replica never answers "not found" in a read quorum) and are then
#: sent to the partition's previous holders; ``"write"`` commands get sloppy quorum and
#: hinted handoff and must be idempotent; ``"other"`` commands get neither.
CommandKind = Literal["read", "write", "other"]
_KINDS = frozenset(("read", "write", "other"))

#: A read that reaches a replica still pulling its partition waits at most this share of
#: its timeout (and at most _READ_WAIT_MAX seconds) for the pull before it is refused.
_READ_WAIT_SHARE = 0.5
_READ_WAIT_MAX = 1.0

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
                tls=self._config.tls,
            )
        if transport.address != self._address:
            raise InvalidArgumentError(
                f"transport address {transport.address} differs from discovery's "
                f"self_address {self._address}"
            )
        self._transport = transport
        cfg = self._config
        # A suspicion must outlive the gap between two failed probes, or "continuously
        # suspected for down_after" could never hold.
        suspicion = max(cfg.suspicion_timeout, 2 * (cfg.probe_interval + cfg.probe_timeout))
        self._membership = Membership(self._address, cfg.partitions, self._clock, suspicion)
        self._handlers: dict[tuple[str, str], Handler] = {}
        self._kinds: dict[tuple[str, str], CommandKind] = {}
        self._hooks: dict[str, DataHooks] = {}
        self._watch_task: asyncio.Task[None] | None = None
        self._running = False
        self._started = asyncio.Event()
        self._previous_ring: Ring | None = None
        self._waiting: set[asyncio.Future[None]] = set()  # local reads waiting for a pull
        self._sync = SyncManager(
            self._address,
            cfg,
            self._clock,
            self._membership,
            self._transport,
            self._hooks,
            self.transfer,
            self._local_write,
        )
        # First listener: the sync bookkeeping must see a change before anyone else acts.
        self._membership.add_listener(self._on_ring_change)
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
        """Current members by address (those in the ring: discovered, not down, not left)."""
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

    @property
    def ready(self) -> bool:
        """True once the node is running and finished its initial sync.

        The initial sync pulls every partition this node replicates (at the default
        replication) from the other nodes that hold it. It ends when every partition was
        merged from at least one complete copy, or when every other member answered and
        none holds one (a new cluster), or after ``sync_give_up_after`` seconds for
        partitions whose holders stay unreachable. Once true it stays true: later ring
        changes make only the affected partitions "not ready" (see ``partition_ready``).
        """
        return self._running and self._sync.ready

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until :attr:`ready` (``timeout`` in seconds of the node's clock).

        Raises:
            RequestTimeoutError: not ready within ``timeout``.
            NotRunningError: the node is not started.
        """
        if not self._running:
            raise NotRunningError(f"node {self._address} is not running")
        if timeout is None:
            await self._sync.wait_ready()
            return
        waiter = asyncio.ensure_future(self._sync.wait_ready())
        timer = self._clock.call_later(timeout, waiter.cancel)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.cancelled() and not self._sync.ready:
                raise RequestTimeoutError(
                    f"node {self._address} not ready after {timeout:g}s"
                ) from None
            raise
        finally:
            timer.cancel()

    def partition_ready(self, partition: int) -> bool:
        """Whether this node may answer reads of ``partition`` (it is not pulling it).

        Handlers of batch reads (several keys per request, so the core cannot check the
        partition for them) should refuse keys of partitions that are not ready by
        raising :class:`PartitionNotReadyError`.
        """
        return self._sync.readable(partition)

    def sync_status(self) -> dict[str, Any]:
        """Data-movement state, for ``GET /cluster`` and metrics (JSON-friendly).

        Keys: ``ready``, ``partitions`` (replicated, pending, held_for_handoff, synced,
        handed_off, dropped, records/bytes received...), ``hints`` (pending per target,
        stored, delivered, dropped...), ``anti_entropy`` (rounds, partitions compared and
        repaired...), ``membership`` (suspected, down, left) and ``leave`` (state and
        report).
        """
        status = self._sync.status()
        status["ready"] = self.ready
        status["address"] = self._address
        status["incarnation"] = self._sync.incarnation
        status["members"] = len(self._membership.ring)
        return status

    # -- registration ------------------------------------------------------------------

    def register(
        self, namespace: str, command: str, handler: Handler, *, kind: CommandKind = "other"
    ) -> None:
        """Register ``handler`` for ``(namespace, command)`` on this node.

        Every node of the cluster must register the same commands (they are called on
        whichever node replicates the key). Plain functions run inline on the transport's
        reader (keep them fast and non-blocking); coroutine functions run in a task.

        Args:
            namespace: the application namespace.
            command: the command name.
            handler: ``handler(ctx, key, payload) -> bytes``.
            kind: ``"read"`` (refused while the key's partition is being pulled, then
                forwarded to its previous holders), ``"write"`` (sloppy quorum and hinted
                handoff; must be idempotent, since a hint may be replayed) or
                ``"other"`` (neither).

        Raises:
            InvalidArgumentError: empty names, a reserved namespace, an unknown kind, or
                the pair is already registered.
        """
        if not namespace or not command:
            raise InvalidArgumentError("namespace and command must be non-empty strings")
        if namespace == INTERNAL:
            raise InvalidArgumentError(f"namespace {INTERNAL!r} is reserved for the core")
        if kind not in _KINDS:
            raise InvalidArgumentError(f"kind must be 'read', 'write' or 'other', not {kind!r}")
        if (namespace, command) in self._handlers:
            raise InvalidArgumentError(f"{namespace}/{command} is already registered")
        self._handlers[(namespace, command)] = handler
        self._kinds[(namespace, command)] = kind

    def register_hooks(self, namespace: str, hooks: DataHooks) -> None:
        """Register the data-movement hooks of ``namespace`` (see :class:`DataHooks`).

        Register them before ``start()``: the initial sync pulls every namespace that has
        hooks at that moment.
        """
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
        """Start the transport and discovery, join the ring and begin the initial sync.

        It returns without waiting for the initial sync; see :attr:`ready` and
        :meth:`wait_ready`.

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
        self._sync.start()
        self._watch_task = asyncio.create_task(
            self._watch_discovery(), name=f"peer-ring-discovery-{self._address}"
        )
        self._started.set()
        logger.info("node %s started with %d members", self._address, len(self._membership.members))

    async def stop(self) -> None:
        """Stop data movement, discovery and the transport. Idempotent.

        This is an abrupt exit for the rest of the cluster (as a crash is); use
        :meth:`leave` to hand the node's data off first.
        """
        if not self._running:
            return
        self._running = False
        await self._sync.stop()
        await self._discovery.stop()
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
            self._watch_task = None
        await self._transport.close()
        logger.info("node %s stopped", self._address)

    async def leave(self, deadline: float | None = None) -> LeaveReport:
        """Leave the cluster gracefully, then stop.

        The node tells every peer it leaves; each peer takes it out of its ring, pulls the
        partitions it gains while this node still serves them, and acknowledges. The node
        stops once every peer acknowledged or ``deadline`` seconds passed. Peers keep it
        out of their ring (even if discovery still lists it) until it starts again.

        Args:
            deadline: seconds to wait for the handoff (default: ``config.leave_deadline``).

        Returns:
            What was and was not handed off.

        Raises:
            NotRunningError: the node is not started.
        """
        if not self._running:
            raise NotRunningError(f"node {self._address} is not running")
        try:
            report = await self._sync.leave(
                self._config.leave_deadline if deadline is None else deadline
            )
        finally:
            await self.stop()
        return report

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
        self._sync.reachability(peer, reachable)

    def _on_ring_change(self, old: Ring, new: Ring) -> None:
        if self._running:  # not the placeholder ring {self} of before the first snapshot
            self._previous_ring = old
        self._sync.on_ring_change(old, new)

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

        For commands registered with ``kind="write"``, a replica that is suspected or
        fails is replaced by the next healthy node of the ring walk, which holds the
        write as a hint for it (its reply counts toward the quorum and carries its own
        address). For ``kind="read"``, a replica that is still pulling the partition is
        replaced by one of the partition's previous holders.

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
        kind = self._kinds.get((namespace, command), "other")
        op = _Operation(self, collector, ring, namespace, command, key_b, payload, partition, n)
        op.timeout = wait
        op.kind = kind
        op.start(prefs)
        return await collector.future

    def _run_local(
        self,
        namespace: str,
        command: str,
        key: bytes,
        payload: bytes,
        partition: int,
        timeout: float,
        on_reply: Callable[[Reply], None],
    ) -> None:
        handler = self._handlers.get((namespace, command))
        if handler is None:
            on_reply(Reply(self._address, b"", self._unknown(namespace, command)))
            return
        ctx = CommandContext(self._address, partition, "", True)
        try:
            out = handler(ctx, key, payload)
            if not inspect.isawaitable(out):
                on_reply(Reply(self._address, _as_bytes(out), None))
                return
        except Exception as exc:
            on_reply(Reply(self._address, b"", exc))
            return
        task = asyncio.ensure_future(out)
        timer = self._clock.call_later(timeout, task.cancel)

        def done(t: asyncio.Future[bytes]) -> None:
            timer.cancel()
            if t.cancelled():
                err: BaseException = RequestTimeoutError(
                    f"{namespace}/{command} on {self._address} timed out after {timeout:g}s"
                )
                on_reply(Reply(self._address, b"", err))
            elif (exc := t.exception()) is not None:
                on_reply(Reply(self._address, b"", exc))
            else:
                on_reply(Reply(self._address, _as_bytes(t.result()), None))

        task.add_done_callback(done)

    async def _local_write(self, namespace: str, command: str, key: bytes, payload: bytes) -> None:
        """Apply a write on this node (a hint redirected here because its target is gone)."""
        handler = self._handlers.get((namespace, command))
        if handler is None:
            raise self._unknown(namespace, command)
        partition = self._membership.ring.partition_for_key(key)
        self._sync.note_write(partition)
        out = handler(CommandContext(self._address, partition, "", True), key, payload)
        if inspect.isawaitable(out):
            await out

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
        if request.namespace == INTERNAL:
            return self._sync.on_internal(source, request)
        self._sync.inbound(source)
        pair = (request.namespace, request.command)
        handler = self._handlers.get(pair)
        if handler is None:
            return Response(
                Status.UNKNOWN_COMMAND,
                b"",
                str(self._unknown(request.namespace, request.command)),
            )
        kind = self._kinds[pair]
        if kind != "other":
            verdict = self._admit(kind, source, request)
            if verdict is not None:
                return verdict
        return _run_handler(handler, source, request)

    def _admit(
        self, kind: CommandKind, source: str, request: Request
    ) -> Response | Awaitable[Response] | None:
        """Hints, and reads of partitions still being pulled, are not run by the handler
        at once (None: run it now).

        A hinted *write* is stored for its intended replica. A read of a partition this
        node is still pulling waits a little for the pull, then is refused "not ready".
        A hinted *read* was forwarded here in place of a replica that could not serve
        it: it is answered only if this node holds a complete copy of the partition (a
        node that already handed it off would otherwise answer "not found").
        """
        hint = request.hint
        forwarded = bool(hint) and hint != self._address
        if forwarded and kind == "write":
            return self._sync.store_hint(request)
        if not request.key:
            return None  # batch commands check their keys themselves (partition_ready)
        partition = self._membership.ring.partition_for_key(request.key)
        if kind == "read":
            if forwarded:
                if not self._sync.holds(partition):
                    return self._not_ready(partition)
            elif not self._sync.readable(partition):
                return self._read_when_ready(source, request, partition)
        else:
            self._sync.note_write(partition)
        return None

    def _not_ready(self, partition: int) -> Response:
        err = PartitionNotReadyError(self._address, partition)
        return Response(Status.UNAVAILABLE, b"", err.reason)

    def _read_wait(self, timeout: float) -> float:
        timeout = timeout or self._config.request_timeout
        return min(timeout * _READ_WAIT_SHARE, _READ_WAIT_MAX)

    async def _read_when_ready(self, source: str, request: Request, partition: int) -> Response:
        if not await self._sync.wait_readable(partition, self._read_wait(request.timeout)):
            return self._not_ready(partition)
        handler = self._handlers[(request.namespace, request.command)]
        out = _run_handler(handler, source, request)
        return out if isinstance(out, Response) else await out

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


class _Operation:
    """The fan-out of one ``execute``: sloppy-quorum substitutes and read forwarding.

    Every reply (remote or local) goes through :meth:`_settle`, which either feeds the
    quorum collector or, for a failed write, sends the write to a substitute with a hint
    (Dynamo §4.6), or, for a read refused as "not ready", asks a previous holder of the
    partition instead. Each node is asked at most once per operation.
    """

    __slots__ = (
        "collector",
        "command",
        "key",
        "kind",
        "n",
        "namespace",
        "node",
        "partition",
        "payload",
        "ring",
        "timeout",
        "used",
    )

    def __init__(
        self,
        node: PeerRing,
        collector: QuorumCollector,
        ring: Ring,
        namespace: str,
        command: str,
        key: bytes,
        payload: bytes,
        partition: int,
        n: int,
    ) -> None:
        self.node = node
        self.collector = collector
        self.ring = ring
        self.namespace = namespace
        self.command = command
        self.key = key
        self.payload = payload
        self.partition = partition
        self.n = n
        self.timeout = 0.0
        self.kind: CommandKind = "other"
        self.used: set[str] = set()

    def start(self, prefs: tuple[str, ...]) -> None:
        node = self.node
        me = node._address
        self.used.update(prefs)
        membership = node._membership
        local = False
        for replica in prefs:
            if replica == me:
                local = True
                continue
            if self.kind == "write" and membership.is_suspected(replica):
                substitute = self._substitute()
                if substitute is not None:
                    self._send(substitute, replica)
                    continue
            self._send(replica, "")
        if local:
            self._send(me, "")

    def _send(self, target: str, hint: str) -> None:
        node = self.node
        if target == node._address:
            if hint and self.kind == "write":
                request = Request(
                    self.namespace, self.command, self.key, self.payload, self.partition, hint
                )
                response = node._sync.store_hint(request)
                self._settle_response(target, hint, response)
            else:
                self._run_local(forwarded=bool(hint))
            return
        fut = node._transport.request(
            target,
            Request(
                self.namespace,
                self.command,
                self.key,
                self.payload,
                self.partition,
                hint,
                self.timeout,
            ),
        )
        fut.add_done_callback(lambda f: self._on_done(target, hint, f))

    def _run_local(self, forwarded: bool = False) -> None:
        node = self.node
        me = node._address
        if self.kind == "read":
            sync = node._sync
            if forwarded and not sync.holds(self.partition):
                self._settle(me, "", PartitionNotReadyError(me, self.partition), forward=True)
                return
            if not forwarded and not sync.readable(self.partition):
                task = asyncio.ensure_future(self._run_local_when_ready())
                node._waiting.add(task)
                task.add_done_callback(node._waiting.discard)
                return
        if self.kind == "write":
            node._sync.note_write(self.partition)
        self._run_handler_locally()

    def _run_handler_locally(self) -> None:
        self.node._run_local(
            self.namespace,
            self.command,
            self.key,
            self.payload,
            self.partition,
            self.timeout,
            self.collector.add,
        )

    async def _run_local_when_ready(self) -> None:
        node = self.node
        if await node._sync.wait_readable(self.partition, node._read_wait(self.timeout)):
            self._run_handler_locally()
        else:
            err = PartitionNotReadyError(node._address, self.partition)
            self._settle(node._address, "", err, forward=True)

    def _on_done(self, target: str, hint: str, fut: asyncio.Future[Response]) -> None:
        sync = self.node._sync
        if fut.cancelled():
            err = RequestTimeoutError(f"request to {target} cancelled")
            self._settle(target, hint, err, forward=False)
            return
        exc = fut.exception()
        if exc is not None:
            unreachable = isinstance(exc, PeerUnavailableError | RequestTimeoutError)
            if unreachable:
                sync.peer_failed(target)
            self._settle(target, hint, exc, forward=unreachable)
            return
        sync.peer_ok(target)
        self._settle_response(target, hint, fut.result())

    def _settle_response(self, target: str, hint: str, response: Response) -> None:
        if response.status == Status.OK:
            self.collector.add(Reply(target, response.payload, None))
            return
        status = Status(response.status)
        err = error_for_status(status, response.error, target)
        # UNAVAILABLE from a peer that answered: it is up but cannot serve this now
        # (pulling the partition, stopping): another holder may.
        self._settle(target, hint, err, forward=status is Status.UNAVAILABLE)

    def _settle(self, target: str, hint: str, err: BaseException, *, forward: bool) -> None:
        if forward and self.node._running:
            if self.kind == "write":
                substitute = self._substitute()
                if substitute is not None:
                    self._send(substitute, hint or target)
                    return
            elif self.kind == "read":
                holder = self._previous_holder()
                if holder is not None:
                    self._send(holder, hint or target)
                    return
        self.collector.add(Reply(target, b"", err))

    def _substitute(self) -> str | None:
        """The next node of the ring walk beyond the first N that is not suspected."""
        ring = self.ring
        size = len(ring)
        if size <= self.n:
            return None
        walk = ring.preference_list(self.partition, min(size, self.n + max(self.n, 3)))
        membership = self.node._membership
        me = self.node._address
        for candidate in walk[self.n :]:
            if candidate in self.used:
                continue
            if candidate != me and membership.is_suspected(candidate):
                continue
            self.used.add(candidate)
            return candidate
        return None

    def _previous_holder(self) -> str | None:
        """A node that replicated the partition before the last ring change."""
        node = self.node
        candidates: list[str] = list(node._sync.read_fallbacks(self.partition))
        previous = node._previous_ring
        if previous is not None and previous.partitions == self.ring.partitions:
            candidates.extend(previous.preference_list(self.partition, self.n))
        membership = node._membership
        for candidate in candidates:
            if candidate in self.used or membership.is_suspected(candidate):
                continue
            if membership.is_down(candidate):
                continue
            self.used.add(candidate)
            return candidate
        return None


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"handler returned {type(value).__name__}, not bytes")


def _run_handler(handler: Handler, source: str, request: Request) -> Response | Awaitable[Response]:
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
