"""Anti-entropy rounds: compare digests with the other replicas and pull what differs.

The choice of partitions and peers per round is
:class:`~peer_ring.core._sync._antientropy.AntiEntropyPlanner`'s; this runs it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from peer_ring.core._errors import PeerRingError
from peer_ring.core._sync._antientropy import AntiEntropyPlanner
from peer_ring.core._sync._context import SyncContext
from peer_ring.core._sync._digests import HoldState, RemotePartition

logger = logging.getLogger(__name__)


class AntiEntropy:
    """Runs anti-entropy rounds and counts what they found."""

    def __init__(self, ctx: SyncContext, readable: Callable[[int], bool]) -> None:
        self._ctx = ctx
        self._readable = readable
        self._planner = AntiEntropyPlanner(ctx.me, ctx.cfg.anti_entropy_batch)
        self.rounds = 0
        self.partitions_compared = 0
        self.partitions_repaired = 0
        self.records_received = 0

    async def round(self) -> None:
        """Compare one batch of partitions with one replica each; merge the differences."""
        ctx = self._ctx
        membership = ctx.membership
        unavailable = membership.suspected | membership.down
        plan = self._planner.next_round(membership.ring, ctx.n, self._readable, unavailable)
        compared = repaired = records = 0
        sem = asyncio.Semaphore(ctx.cfg.sync_concurrency)
        for peer, parts in plan.items():
            try:
                remote = await ctx.fetch_digests(peer, parts)
            except (PeerRingError, ValueError) as exc:
                logger.debug("anti-entropy with %s skipped: %s", peer, exc)
                continue
            compared += len(parts)

            async def one(p: int, entry: RemotePartition | None, peer: str = peer) -> int:
                if entry is None or entry.state is HoldState.NONE or entry.equal:
                    return 0
                async with sem:
                    got = await ctx.merge_from(peer, p, entry.digests)
                return got or 0

            results = await asyncio.gather(*(one(p, remote.get(p)) for p in parts))
            repaired += sum(1 for r in results if r)
            records += sum(results)
        self.rounds += 1
        self.partitions_compared += compared
        self.partitions_repaired += repaired
        self.records_received += records
        log = logger.info if records else logger.debug
        log(
            "node %s: anti-entropy round compared %d partition(s), repaired %d (%d records)",
            ctx.me,
            compared,
            repaired,
            records,
        )
