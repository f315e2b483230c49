"""The asyncio driver of data movement: a thin facade over its parts.

Every decision is taken by the pure parts (:class:`PartitionTable`, :class:`HintStore`,
:class:`AntiEntropyPlanner`, :func:`decide_pull`, :mod:`._planning`, the digest
functions); the I/O is split by concept:

* :mod:`._detector` — failure detection (the probe loop, suspicion, down and back,
  incarnations, forgetting departed peers), and, from its probe answers, the clock offsets
  to the peers (:mod:`._clock_offsets`);
* :mod:`._puller` — pulls (initial sync and partitions gained in ring changes);
* :mod:`._handoff` — handing lost partitions over, both sides;
* :mod:`._hinted` — hinted handoff;
* :mod:`._repair` — anti-entropy rounds, and the comparisons right after a pull of the
  partitions that received writes while pulled (:mod:`._after_pull` keeps which);
* :mod:`._leaver` — graceful leave, both sides;
* :mod:`._commands` — the internal commands peers send (``ping``, ``digests``,
  ``handoff``, ``leaving``);
* :mod:`._context` — what they share.

This module keeps the node-facing API and the **work loop**: it starts, one at a time of
each kind, a pull round, a handoff round, hint deliveries (one task per reachable target),
after-pull comparisons and anti-entropy rounds, and sleeps on the node's clock until the
next due time or until something wakes it (a ring change, a peer answering again, a
finished round).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable
from typing import Any

from peer_ring.core._clock import Clock
from peer_ring.core._config import PeerRingConfig
from peer_ring.core._hooks import DataHooks
from peer_ring.core._membership import Membership
from peer_ring.core._ring import Ring
from peer_ring.core._sync._after_pull import AFTER_PULL_DELAY, AfterPullRepairs
from peer_ring.core._sync._antientropy import jittered
from peer_ring.core._sync._commands import InternalCommands
from peer_ring.core._sync._context import LocalWriteFn, SyncContext, TransferFn
from peer_ring.core._sync._detector import FailureDetector
from peer_ring.core._sync._digests import HoldState
from peer_ring.core._sync._handoff import Handoff
from peer_ring.core._sync._hinted import HintedHandoff
from peer_ring.core._sync._hints import HintStore
from peer_ring.core._sync._leave import LeaveReport
from peer_ring.core._sync._leaver import Leaver
from peer_ring.core._sync._partitions import PartitionTable
from peer_ring.core._sync._puller import Puller
from peer_ring.core._sync._repair import AntiEntropy
from peer_ring.core._types import Request, Response
from peer_ring.core.transport._base import Transport

logger = logging.getLogger(__name__)


class SyncManager:
    """Data movement of one node (see the module docstring).

    Args:
        address: this node's address.
        config: the node's configuration.
        clock: the node's clock.
        membership: the node's membership view (ring listener registered by the node;
            the manager registers a departure listener itself).
        transport: the node's transport.
        hooks: the node's data hooks by namespace (the live dict: hooks registered later
            are seen).
        transfer: the node's ``transfer`` (bulk pull of a partition from a peer).
        local_write: runs a write locally (used when a hint is redirected to this node).
        rng: randomness for jitter and incarnations (seed it for reproducible tests).
    """

    def __init__(
        self,
        address: str,
        config: PeerRingConfig,
        clock: Clock,
        membership: Membership,
        transport: Transport,
        hooks: dict[str, DataHooks],
        transfer: TransferFn,
        local_write: LocalWriteFn,
        rng: random.Random | None = None,
    ) -> None:
        self._rng = rng or random.Random()
        ctx = SyncContext(address, config, clock, membership, transport, hooks, transfer, self._rng)
        self._ctx = ctx
        #: The per-partition sync state (``ctx.table`` is never reassigned). A plain
        #: attribute, not a property: read inline by the dispatcher's and the operation's
        #: hot path. :meth:`readable` is ``p not in table.pending``; :meth:`note_write` has
        #: nothing to do when ``p not in table.pending and (p in table.replicated or p in
        #: table.held)``.
        self.table: PartitionTable = ctx.table
        self._detector = FailureDetector(ctx, self._peer_back)
        ctx.peer_ok = self._detector.peer_ok
        ctx.peer_failed = self._detector.peer_failed
        self._puller = Puller(ctx)
        self._handoff = Handoff(ctx)
        self._hinted = HintedHandoff(ctx, local_write)
        self._ae = AntiEntropy(ctx, self._puller.readable)
        self._after_pull = AfterPullRepairs(retry_after=config.sync_retry_max)
        self._after_pull_task: asyncio.Task[None] | None = None
        self._leaver = Leaver(ctx, self._detector)
        self._commands = InternalCommands(
            ctx, self._detector, self._handoff.serve, self._leaver.serve
        )
        membership.add_departure_listener(self._detector.departed)
        self._loops: list[asyncio.Task[None]] = []
        self._pull_task: asyncio.Task[None] | None = None
        self._handoff_task: asyncio.Task[None] | None = None
        self._ae_task: asyncio.Task[None] | None = None
        self._ae_next = 0.0

    # -- state -------------------------------------------------------------------------

    @property
    def incarnation(self) -> int:
        """This node's incarnation (random per manager; peers see a restart by it)."""
        return self._ctx.incarnation

    @property
    def hints(self) -> HintStore:
        """The hinted writes kept for other nodes."""
        return self._ctx.hints

    @property
    def ready(self) -> bool:
        """True once the initial pull finished (stays true afterwards)."""
        return self._ctx.table.ready

    async def wait_ready(self) -> None:
        """Wait until :attr:`ready`."""
        await self._puller.wait_ready()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Plan the initial pull and start the loops (the ring must be known)."""
        ctx = self._ctx
        ctx.stopped = False
        self._puller.start()
        interval = ctx.cfg.anti_entropy_interval
        if interval is not None:
            self._ae_next = ctx.clock.monotonic() + jittered(interval, self._rng)
        ctx.running = True
        self._loops = [
            asyncio.create_task(self._detector.loop(), name=f"peer-ring-probe-{ctx.me}"),
            asyncio.create_task(self._work_loop(), name=f"peer-ring-sync-{ctx.me}"),
        ]

    async def stop(self) -> None:
        """Cancel every task of the manager."""
        ctx = self._ctx
        ctx.stopped = True
        ctx.running = False
        ctx.progress_made()
        tasks = [*self._loops, *ctx.tasks]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._loops = []
        ctx.tasks.clear()

    # -- observations from the node ------------------------------------------------------

    def on_ring_change(self, old: Ring, new: Ring) -> None:
        """Ring listener: plan pulls of gained partitions and handoffs of lost ones."""
        ctx = self._ctx
        change = ctx.table.ring_changed(old, new, ctx.clock.monotonic())
        ctx.progress_made()
        # Losing a partition still pending may end the initial sync (see ring_changed).
        self._puller.note_ready()
        if change.gained or change.lost:
            logger.info(
                "node %s: ring change gains %d partition(s) to pull and loses %d to hand off",
                ctx.me,
                len(change.gained),
                len(change.lost),
            )
        ctx.wake.set()

    def peer_ok(self, peer: str) -> None:
        """A round trip initiated by this node succeeded: ``peer`` is reachable."""
        self._detector.peer_ok(peer)

    def peer_failed(self, peer: str) -> None:
        """A request to ``peer`` failed at the transport level (unreachable, timeout)."""
        self._detector.peer_failed(peer)

    def inbound(self, peer: str) -> None:
        """``peer`` sent this node a request (see :meth:`FailureDetector.inbound`)."""
        self._detector.inbound(peer)

    def reachability(self, peer: str, reachable: bool) -> None:
        """Transport reachability report (a stream to ``peer`` opened or broke)."""
        self._detector.reachability(peer, reachable)

    def _peer_back(self, peer: str) -> None:
        ctx = self._ctx
        ctx.table.retry_now(ctx.clock.monotonic())
        ctx.hints.retry_now(peer)
        ctx.wake.set()

    # -- admission (called by the node on the request path) ------------------------------

    def readable(self, partition: int) -> bool:
        """Whether this node may answer reads of ``partition`` (it is not pulling it)."""
        return partition not in self._ctx.table.pending

    async def wait_readable(self, partition: int, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``partition`` to become readable.

        A read that reaches a replica still pulling the partition waits a little before
        it is refused: a cluster that has just started pulls in milliseconds, and the read
        then succeeds instead of failing its quorum.
        """
        return await self._puller.wait_readable(partition, timeout)

    def holds(self, partition: int) -> bool:
        """Whether this node holds a complete copy of ``partition`` (for forwarded reads)."""
        return self._ctx.table.state(partition) is HoldState.COMPLETE

    def note_write(self, partition: int) -> None:
        """A mutating command of ``partition`` arrived here (before its handler runs): hold
        the partition if nobody expects it here, and if this node is still pulling it,
        compare it with its replicas once the pull is over (the application may refuse the
        write meanwhile: see :mod:`._after_pull`)."""
        ctx = self._ctx
        if partition in ctx.table.pending:
            self._after_pull.note(partition)
        ctx.note_write(partition)

    def read_fallbacks(self, partition: int) -> tuple[str, ...]:
        """Nodes that replicated a partition this node is still pulling (they keep
        serving it until the handoff completes: Riak-style forwarding)."""
        return self._ctx.table.holders(partition)

    def store_hint(self, request: Request) -> Response:
        """Keep a hinted write for its intended replica (Dynamo §4.6)."""
        return self._hinted.store(request)

    def on_internal(self, source: str, request: Request) -> Response | Awaitable[Response]:
        """Answer one internal command."""
        return self._commands.answer(source, request)

    # -- work loop -----------------------------------------------------------------------

    async def _pull_round(self, partitions: list[int]) -> None:
        await self._puller.round(partitions)

    async def _repair_after_pull(self, partitions: list[int]) -> None:
        table = self._ctx.table
        # Lost since (held and handed off instead) or pending again (the new pull brings
        # what the complete holders have): nothing to compare.
        parts = [p for p in partitions if p in table.replicated and p not in table.pending]
        if parts:
            failed = await self._ae.after_pull(parts)
            self._after_pull.failed(failed, self._ctx.clock.monotonic())

    async def _work_loop(self) -> None:
        ctx = self._ctx
        cfg = ctx.cfg
        while True:
            ctx.wake.clear()
            now = ctx.clock.monotonic()
            table = ctx.table
            if _idle(self._pull_task):
                due = table.due_pulls(now, cfg.sync_batch)
                if due:
                    self._pull_task = ctx.spawn(self._pull_round(due), "peer-ring-pull")
            if _idle(self._handoff_task):
                due = table.due_handoffs(now, cfg.sync_batch)
                if due:
                    self._handoff_task = ctx.spawn(self._handoff.round(due), "peer-ring-handoff")
            self._hinted.start_due(now)
            after_pull = self._after_pull
            if after_pull:
                pulled = after_pull.pulled(table.pending, table.replicated, now)
                if pulled:
                    logger.debug(
                        "node %s: %d partition(s) pulled that received writes meanwhile: "
                        "comparing them with their replicas in %.1fs",
                        ctx.me,
                        len(pulled),
                        AFTER_PULL_DELAY,
                    )
                if _idle(self._after_pull_task):
                    due = after_pull.due(now, cfg.anti_entropy_batch)
                    if due:
                        self._after_pull_task = ctx.spawn(
                            self._repair_after_pull(due), "peer-ring-after-pull"
                        )
            interval = cfg.anti_entropy_interval
            if interval is not None and now >= self._ae_next and table.ready:
                if _idle(self._ae_task):
                    self._ae_task = ctx.spawn(self._ae.round(), "peer-ring-ae")
                self._ae_next = now + jittered(interval, self._rng)
            delay = cfg.probe_interval
            next_due = table.next_due()
            if next_due is not None:
                delay = min(delay, max(next_due - now, 0.0))
            if interval is not None:
                delay = min(delay, max(self._ae_next - now, 0.0))
            after_due = self._after_pull.next_due()
            if after_due is not None:
                delay = min(delay, max(after_due - now, 0.0))
            if delay <= 0:
                delay = cfg.probe_interval  # due work is already running: wait for it
            await ctx.sleep_or(ctx.wake, delay)

    # -- leave ---------------------------------------------------------------------------

    @property
    def leave_state(self) -> str:
        """``"none"``, ``"leaving"`` or ``"left"``."""
        return self._leaver.state

    async def leave(self, deadline: float) -> LeaveReport:
        """Tell every peer this node leaves and wait (up to ``deadline`` seconds) until
        they pulled what they gain. Does not stop the node."""
        return await self._leaver.leave(deadline)

    # -- status --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The data-movement state of this node (JSON-friendly)."""
        ctx = self._ctx
        table = ctx.table
        c = table.counters
        hints = ctx.hints
        h = hints.counters
        membership = ctx.membership
        report = self._leaver.report
        ae = self._ae
        return {
            "ready": table.ready,
            "partitions": {
                "replicated": len(table.replicated),
                "pending": len(table.pending),
                "held_for_handoff": len(table.held),
                "initial_total": table.initial_total,
                "synced": c.synced,
                "nothing_to_pull": c.nothing_to_pull,
                "given_up": c.given_up,
                "pull_retries": c.retries,
                "gained": c.gained,
                "lost": c.lost,
                "stray": c.stray,
                "handed_off": c.handed_off,
                "dropped": c.dropped,
                "dropped_unconfirmed": c.dropped_unconfirmed,
                "records_received": ctx.records_received,
                "bytes_received": ctx.bytes_received,
                "records_applied": ctx.records_applied,
                "versions_bytes_sent": ctx.versions_bytes_sent,
                "delta_requests": ctx.delta_requests,
                "buckets_transferred_whole": ctx.buckets_transferred_whole,
            },
            "hints": {
                "pending": hints.pending(),
                "pending_total": len(hints),
                "pending_bytes": hints.size_bytes,
                "stored": h.stored,
                "delivered": h.delivered,
                "dropped_expired": h.dropped_expired,
                "dropped_refused": h.dropped_refused,
                "rejected_full": h.rejected_full,
            },
            "anti_entropy": {
                "enabled": ctx.cfg.anti_entropy_interval is not None,
                "rounds": ae.rounds,
                "partitions_compared": ae.partitions_compared,
                "partitions_repaired": ae.partitions_repaired,
                "records_received": ae.records_received,
                "after_pull_waiting": len(self._after_pull),
                "after_pull_noted": self._after_pull.noted,
                "after_pull_compared": ae.after_pull_compared,
                "after_pull_repaired": ae.after_pull_repaired,
                "after_pull_records_received": ae.after_pull_records,
            },
            "membership": {
                "suspected": sorted(membership.suspected),
                "down": sorted(membership.down),
                "left": sorted(membership.left),
                "probes_failed": self._detector.probes_failed,
                "peers_forgotten": self._detector.peers_forgotten,
            },
            "clock": self._detector.clock_offsets.status(),
            "leave": {
                "state": self._leaver.state,
                "acknowledged": list(report.acknowledged) if report else [],
                "failed": dict(report.failed) if report else {},
                "not_handed_off": dict(report.not_handed_off) if report else {},
            },
        }


def _idle(task: asyncio.Task[None] | None) -> bool:
    return task is None or task.done()
