"""``PeerRing``: one node of the cluster — the facade applications use.

The work is done by three parts this class wires together:

* the :class:`~peer_ring.core._dispatcher.Dispatcher` holds the registered commands and is
  the one path by which a handler runs, for requests from peers and for the node's own
  runs alike;
* the :class:`~peer_ring.core._coordinator.Coordinator` runs ``execute``,
  ``execute_many``, ``send`` and ``call`` (quorums, sloppy quorum with hinted handoff for
  hinted commands, read forwarding for reading commands);
* the :class:`~peer_ring.core._sync.SyncManager` moves data (initial sync, rebalancing,
  handoff, hinted handoff, anti-entropy, failure detection).

This module builds and wires them and runs the node's lifecycle (start, stop, leave,
discovery, registration, serving transfers); the per-operation API (``execute``,
``execute_many``, ``send``, ``call``, ``transfer``, ``preference_list``...) is
:class:`~peer_ring.core._node_operations.NodeOperations`, its base class.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from peer_ring.core._clock import Clock, SystemClock
from peer_ring.core._command import Command, Handler, as_command
from peer_ring.core._config import PeerRingConfig
from peer_ring.core._coordinator import Coordinator
from peer_ring.core._discovery import Discovery
from peer_ring.core._dispatcher import Dispatcher
from peer_ring.core._errors import (
    InvalidArgumentError,
    NotRunningError,
    RequestTimeoutError,
    UnknownCommandError,
)
from peer_ring.core._hooks import DataHooks
from peer_ring.core._membership import Membership, RingListener
from peer_ring.core._node_operations import NodeOperations
from peer_ring.core._ownership import OwnershipListener, OwnershipTracker
from peer_ring.core._ring import Ring
from peer_ring.core._runner import freeze_gc_if_requested
from peer_ring.core._sync import LeaveReport, SyncManager
from peer_ring.core._types import Member, TransferRequest

if TYPE_CHECKING:
    from peer_ring.core.transport._base import Transport

logger = logging.getLogger(__name__)

#: Records are moved in chunks of at most this many bytes (well under the message limit).
_TRANSFER_CHUNK_BYTES = 1 << 20


class PeerRing(NodeOperations):
    """A peer-ring node.

    Args:
        discovery: where the member set comes from; its ``self_address`` is this node's
            identity and the address its transport listens on.
        config: partitions, default replication/quorum, timeouts and limits.
        transport: how to reach peers; defaults to ``config.transport`` (gRPC unless
                ``"tcp"``) on ``discovery.self_address``.
        clock: time source (inject ``peer_ring.core.testing.FakeClock`` in tests).

    Example:
        >>> SAY = Command("say")
        >>> async with PeerRing(StaticDiscovery(peers, self_address=me)) as node:  # doctest: +SKIP
        ...     node.register("echo", SAY, lambda ctx, key, payload: payload)
        ...     result = await node.execute("echo", SAY, b"k", b"hi", replication=3, quorum=2)
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
        if transport is None and self._config.transport == "tcp":
            from peer_ring.core.transport import TcpTransport

            transport = TcpTransport(
                self._address,
                limits=self._config.transport_limits,
                token=self._config.token,
                clock=self._clock,
                tls=self._config.tls,
            )
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
        self._hooks: dict[str, DataHooks] = {}
        self._watch_task: asyncio.Task[None] | None = None
        self._running = False
        self._started = asyncio.Event()
        self._dispatcher = Dispatcher(
            self._address, self._clock, self._membership, cfg.request_timeout
        )
        self._sync = SyncManager(
            self._address,
            cfg,
            self._clock,
            self._membership,
            self._transport,
            self._hooks,
            self.transfer,
            self._dispatcher.local_write,
        )
        self._dispatcher.sync = self._sync
        self._coord = Coordinator(
            self._address,
            cfg,
            self._membership,
            transport,
            self._dispatcher,
            self._sync,
            self._clock,
        )
        self._coord.look_for_tracing = self._look_for_tracing
        self._look_for_tracing()
        self._ownership = OwnershipTracker(self._address, cfg.replication)
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
        # SyncManager.readable inline (one call per replica write and local read):
        # ``table`` is a plain attribute, never reassigned, for this (see SyncManager).
        return partition not in self._sync.table.pending

    def reads_here(self, partition: int, n: int) -> bool:
        """Whether this node replicates ``partition`` at replication ``n`` and may answer
        reads of it now: ``address in ring.preference_list(partition, n) and
        partition_ready(partition)`` in one call (a local read's check).

        Raises:
            InvalidArgumentError: ``n < 1`` or ``partition`` is out of range.
        """
        ring = self._membership._ring
        lists = ring._lists.get(n)  # Ring.preference_list inline, as in execute
        if lists is None:
            lists = ring._lists_for(n)
        if not 0 <= partition < ring._partitions:
            raise ring._bad_partition(partition)
        return self._address in lists[partition] and (partition not in self._sync.table.pending)

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
        status["send"] = {"sent": self._coord.sent, "failed": self._coord.send_failures}
        status["quorum_failures"] = dict(self._coord.quorum_failures)
        status["reads"] = {
            "speculative": self._coord.speculative_reads,
            "retried": self._coord.read_retries,
        }
        return status

    # -- registration ------------------------------------------------------------------

    def register(self, namespace: str, command: Command | str, handler: Handler) -> None:
        """Register ``handler`` for ``command`` in ``namespace`` on this node.

        Every node of the cluster must register the same commands (they are called on
        whichever node replicates the key). Plain functions run inline on the transport's
        reader (keep them fast and non-blocking); coroutine functions run in a task,
        bounded by the request's timeout. A handler returns ``bytes`` (``bytearray`` and
        ``memoryview`` are accepted and converted); an exception it raises reaches the
        caller as the same typed error whether the handler ran locally or remotely
        (``PeerRingError`` subclasses keep their class, anything else is a
        :class:`RemoteError` naming the original type).

        Args:
            namespace: the application namespace.
            command: the :class:`Command` declaration (what the coordinator must know:
                reads, mutates, hinted). A bare name registers a plain command (neither
                reads nor mutates: no read forwarding, no hints).
            handler: ``handler(ctx, key, payload) -> bytes``.

        Raises:
            InvalidArgumentError: empty names, a reserved namespace (``__peer_ring*``),
                or the pair is already registered.
        """
        self._dispatcher.register(namespace, as_command(command), handler)

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

    def add_ownership_listener(self, listener: OwnershipListener) -> None:
        """Call ``listener(OwnershipChange)`` when this node's partitions change.

        It is called once at ``start()`` (everything this node replicates is "gained";
        at once when added to a running node) and then on every ring change that changes
        the partitions this node replicates at ``config.replication`` or heads. Use it for
        state kept outside :class:`DataHooks` (leases, sessions, caches). Called inline on
        the event loop; exceptions are logged and ignored.
        """
        self._ownership.add_listener(listener)

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
        self._dispatcher.accepting = True
        # The dispatcher itself is the inbound handler: callable with a Request (the memory
        # transport), and its ``dispatch`` takes a decoded request's fields (TCP, gRPC).
        await self._transport.start(self._dispatcher, self._on_transfer)
        try:
            members = await self._discovery.start()
        except BaseException:
            # A start that failed or was cancelled (SIGTERM while joining) may already have
            # registered this node (an etcd key on a live lease, a ZooKeeper node): stop()
            # releases that too. stop() below would skip it, as the node is not running.
            try:
                await self._discovery.stop()
            except Exception:
                logger.warning("discovery stop after a failed start failed", exc_info=True)
            await self._transport.close()
            raise
        self._membership.update(members)
        self._look_for_tracing()  # a provider configured since the node was made
        self._running = self._coord.running = True
        self._ownership.update(self._membership.ring)
        self._sync.start()
        self._watch_task = asyncio.create_task(
            self._watch_discovery(), name=f"peer-ring-discovery-{self._address}"
        )
        self._started.set()
        freeze_gc_if_requested()  # run(gc_freeze_after_start=True) only
        logger.info("node %s started with %d members", self._address, len(self._membership.members))

    async def stop(self) -> None:
        """Stop data movement, discovery and the transport. Idempotent.

        This is an abrupt exit for the rest of the cluster (as a crash is); use
        :meth:`leave` to hand the node's data off first.
        """
        if not self._running:
            return
        self._running = self._coord.running = self._dispatcher.accepting = False
        self._coord.speculation.close()  # pending quorum reads no longer speculate
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
        self._sync.on_ring_change(old, new)
        if self._running:  # not the placeholder ring {self} of before the first snapshot
            self._coord.previous_ring = old
            self._ownership.update(new)

    # -- inbound -----------------------------------------------------------------------

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
