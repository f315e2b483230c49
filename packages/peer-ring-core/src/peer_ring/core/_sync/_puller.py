"""Pulls: the initial sync of a starting node and the partitions gained in ring changes.

A pull *round* takes the due pending partitions, asks every live member for their digests
(whom to ask: :func:`~peer_ring.core._sync._planning.plan_pull_requests`), merges the
differing buckets from each holder (in the order of
:func:`~peer_ring.core._sync._planning.order_sources`), and judges each partition with
:func:`~peer_ring.core._sync._partitions.decide_pull`.
"""

from __future__ import annotations

import asyncio
import logging

from peer_ring.core._errors import PeerRingError
from peer_ring.core._sync._context import DIGESTS_FRESH_FOR, SyncContext
from peer_ring.core._sync._digests import HoldState, RemotePartition
from peer_ring.core._sync._partitions import PullOutcome, decide_pull
from peer_ring.core._sync._planning import (
    nothing_to_transfer,
    order_sources,
    plan_pull_requests,
)
from peer_ring.core._sync._roots import in_slices

logger = logging.getLogger(__name__)

_Sources = list[tuple[str, RemotePartition]]


class Puller:
    """Pulls pending partitions and tracks the node's readiness."""

    def __init__(self, ctx: SyncContext) -> None:
        self._ctx = ctx
        self._ready = asyncio.Event()
        self.started_at = 0.0

    # -- readiness -------------------------------------------------------------------------

    def start(self) -> None:
        """Plan the initial pull (the ring must be known)."""
        ctx = self._ctx
        now = ctx.clock.monotonic()
        self.started_at = now
        self._ready = asyncio.Event()
        ctx.table.start(ctx.membership.ring, now)
        if not ctx.hooks or len(ctx.membership.discovered) == 1:
            # Nothing to move (no application data), or nobody to pull from.
            ctx.table.mark_all_synced()
        total = len(ctx.table.pending)
        if total:
            logger.info(
                "node %s: initial sync of %d partition(s) from %d peer(s)",
                ctx.me,
                total,
                len(ctx.membership.ring) - 1,
            )
        self.note_ready()

    async def wait_ready(self) -> None:
        """Wait until the initial pull finished."""
        await self._ready.wait()

    def note_ready(self) -> None:
        """Release :meth:`wait_ready` once the table is ready (logged once)."""
        table = self._ctx.table
        if table.ready and not self._ready.is_set():
            self._ready.set()
            elapsed = self._ctx.clock.monotonic() - self.started_at
            logger.info(
                "node %s ready: initial sync of %d partition(s) finished in %.1fs",
                self._ctx.me,
                table.initial_total,
                elapsed,
            )

    def readable(self, partition: int) -> bool:
        """Whether this node may answer reads of ``partition`` (it is not pulling it)."""
        return partition not in self._ctx.table.pending

    async def wait_readable(self, partition: int, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``partition`` to become readable."""
        ctx = self._ctx
        deadline = ctx.clock.monotonic() + timeout
        while not self.readable(partition):
            left = deadline - ctx.clock.monotonic()
            if left <= 0 or ctx.stopped:
                return False
            await ctx.wait_progress(left)
        return True

    # -- one round -------------------------------------------------------------------------

    async def round(self, partitions: list[int]) -> None:
        """One attempt at pulling ``partitions``: digests from every live member, then
        the differing buckets from each holder, then judge each partition."""
        ctx = self._ctx
        table = ctx.table
        membership = ctx.membership
        epoch = table.epoch
        plan = plan_pull_requests(
            partitions,
            {p: table.holders(p) for p in partitions},
            ctx.me,
            membership.discovered,
            membership.down,
            membership.left,
        )
        candidates = plan.candidates
        suspected = membership.suspected
        answers: dict[str, dict[int, RemotePartition]] = {}
        asked = {node: parts for node, parts in plan.ask.items() if node not in suspected}
        if asked:
            # Our own roots once per round, whoever we ask (digests cost CPU on big stores).
            roots = await ctx.local_roots(partitions)

            async def fetch(node: str, parts: list[int]) -> None:
                try:
                    answers[node] = await ctx.fetch_digests(node, parts, roots)
                except (PeerRingError, ValueError) as exc:
                    logger.debug("digests from %s failed: %s", node, exc)

            await asyncio.gather(*(fetch(node, parts) for node, parts in asked.items()))
        fetched_at = ctx.clock.monotonic()
        sem = asyncio.Semaphore(ctx.cfg.sync_concurrency)
        ring = membership.ring
        give_up = ctx.cfg.sync_give_up_after

        def judge(p: int, sources: _Sources, merged: bool) -> None:
            now = ctx.clock.monotonic()
            states = {node: entry.state for node, entry in sources}
            pending_for = table.pending_for(p, now)
            outcome = decide_pull(candidates[p], states, merged, pending_for, give_up)
            if outcome is PullOutcome.GAVE_UP:
                logger.warning(
                    "partition %d: no complete replica reachable for %.0fs; serving what was "
                    "pulled (anti-entropy repairs it later)",
                    p,
                    pending_for,
                )
            table.pull_result(p, outcome, now, epoch)

        async def merge(p: int, sources: _Sources) -> None:
            merged_complete = False
            async with sem:
                merged_any = False
                for node, entry in sources:
                    if entry.state is HoldState.NONE:
                        continue
                    stale = ctx.clock.monotonic() - fetched_at > DIGESTS_FRESH_FOR
                    if (merged_any or stale) and not entry.equal:
                        # The round's digests predate the merge we just did (or the wait for
                        # a transfer slot), and under load every bucket written since then
                        # differs from them: comparing against them would re-send whole
                        # buckets we already have. Ask again, right before the transfer.
                        try:
                            fresh = await ctx.fetch_digests(node, [p])
                        except (PeerRingError, ValueError) as exc:
                            logger.debug("digests from %s failed: %s", node, exc)
                            continue
                        if p not in fresh:
                            continue
                        entry = fresh[p]
                    ok = entry.equal or await ctx.merge_from(node, p, entry.digests) is not None
                    merged_any = merged_any or ok
                    if ok and entry.state is HoldState.COMPLETE:
                        merged_complete = True
            judge(p, sources, merged_complete)

        transfers = []
        # In slices: up to sync_batch partitions are judged here (see ._roots).
        async for p in in_slices(partitions, pause=ctx.between_slices):
            if p not in table.pending:
                continue
            sources = [
                (node, answers[node][p]) for node in candidates[p] if p in answers.get(node, {})
            ]
            if nothing_to_transfer(sources):
                # Nothing to transfer (the common case of empty or identical copies):
                # judged at once, without a task per partition.
                complete = any(entry.state is HoldState.COMPLETE for _, entry in sources)
                judge(p, sources, complete)
                continue
            ordered = order_sources(sources, table.holders(p), ring.preference_list(p, ctx.n))
            transfers.append(merge(p, ordered))
        before = len(partitions)
        await asyncio.gather(*transfers)
        done = sum(1 for p in partitions if p not in table.pending)
        ctx.progress_made()
        if done:
            after = len(table.pending)
            if self._ready.is_set():
                logger.info("node %s: pulled %d partition(s), %d pending", ctx.me, done, after)
            else:
                total = table.initial_total
                logger.info(
                    "node %s: initial sync %d/%d partitions done (%d in this round of %d)",
                    ctx.me,
                    max(total - after, 0),
                    total,
                    done,
                    before,
                )
        self.note_ready()
