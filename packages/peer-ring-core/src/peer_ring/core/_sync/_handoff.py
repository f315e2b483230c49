"""Handoff: a node hands the partitions it no longer replicates to their replicas, then
drops them; the receiving side pulls what differs and confirms (riak_core's "handoff
before delete")."""

from __future__ import annotations

import asyncio
import logging

from peer_ring.core._errors import PeerRingError
from peer_ring.core._sync._context import DIGESTS_FRESH_FOR, HANDOFF_BATCH, SyncContext
from peer_ring.core._sync._digests import HoldState, is_empty
from peer_ring.core._sync._roots import in_slices
from peer_ring.core._sync._wire import decode_partitions, encode_partitions

logger = logging.getLogger(__name__)


class Handoff:
    """Both sides of a handoff."""

    def __init__(self, ctx: SyncContext) -> None:
        self._ctx = ctx

    async def round(self, partitions: list[int]) -> None:
        """Hand held partitions to their current replicas; drop the confirmed ones."""
        ctx = self._ctx
        table = ctx.table
        membership = ctx.membership
        targets: dict[int, list[str]] = {}
        by_target: dict[str, list[int]] = {}
        # In slices: each partition calls the application's digest hook, and a dropped one
        # its drop hook (a whole partition's records), see ._roots.
        async for p in in_slices(partitions, pause=ctx.between_slices):
            if p in table.replicated:
                continue
            if is_empty(ctx.local_digests(p)):
                table.drop_empty(p)
                ctx.drop(p)
                continue
            # The ring of now (it may change between slices).
            nodes = [n for n in membership.ring.preference_list(p, ctx.n) if n != ctx.me]
            targets[p] = nodes
            for node in nodes:
                by_target.setdefault(node, []).append(p)
        confirmed: dict[str, set[int]] = {}
        suspected = membership.suspected

        async def hand(node: str, parts: list[int]) -> None:
            got: set[int] = set()
            confirmed[node] = got
            for i in range(0, len(parts), HANDOFF_BATCH):
                batch = parts[i : i + HANDOFF_BATCH]
                try:
                    data = await ctx.ask(
                        node, "handoff", encode_partitions(batch), ctx.cfg.handoff_timeout
                    )
                except PeerRingError as exc:
                    logger.debug(
                        "handoff of %d partition(s) to %s failed: %s", len(batch), node, exc
                    )
                    return
                got.update(decode_partitions(data))

        await asyncio.gather(
            *(hand(node, parts) for node, parts in by_target.items() if node not in suspected)
        )
        now = ctx.clock.monotonic()
        dropped = 0
        async for p, nodes in in_slices(list(targets.items()), pause=ctx.between_slices):
            ok = bool(nodes) and all(p in confirmed.get(node, ()) for node in nodes)
            if table.handoff_result(p, ok, now):
                ctx.drop(p)
                dropped += 1
        if dropped:
            logger.info(
                "node %s: handed off and dropped %d partition(s), %d still held",
                ctx.me,
                dropped,
                len(table.held),
            )

    async def serve(self, source: str, payload: bytes) -> bytes:
        """``source`` lost these partitions: pull what differs from it, then confirm.

        A partition this node is still pulling is merged but not confirmed: the source
        must keep it (and keep answering forwarded reads) until this node serves it.
        """
        ctx = self._ctx
        wanted = [p for p in decode_partitions(payload) if p in ctx.table.replicated]
        if not wanted:
            return encode_partitions([])
        remote = await ctx.fetch_digests(source, wanted)
        confirmed: list[int] = []
        sem = asyncio.Semaphore(ctx.cfg.sync_concurrency)
        fetched_at = ctx.clock.monotonic()

        async def one(p: int) -> None:
            entry = remote.get(p)
            if entry is None:
                return
            if not (entry.state is HoldState.NONE or entry.equal):
                async with sem:
                    if ctx.clock.monotonic() - fetched_at > DIGESTS_FRESH_FOR:
                        # Stale after waiting for a slot: see Puller.round.
                        entry = (await ctx.fetch_digests(source, [p])).get(p, entry)
                    if entry.equal:
                        pass
                    elif await ctx.merge_from(source, p, entry.digests) is None:
                        return
            if p not in ctx.table.pending:
                confirmed.append(p)

        await asyncio.gather(*(one(p) for p in wanted))
        return encode_partitions(sorted(confirmed))
