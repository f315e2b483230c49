"""Anti-entropy rounds: compare digests with the other replicas and pull what differs.

The choice of partitions and peers per round is
:class:`~peer_ring.core._sync._antientropy.AntiEntropyPlanner`'s; this runs it. The same
comparison runs for the partitions that received writes while they were pulled, right after
their pull (:mod:`~peer_ring.core._sync._after_pull`), with every other replica.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

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
        #: Partitions compared with every other replica right after their pull because
        #: they received writes while pulled (see :mod:`._after_pull`).
        self.after_pull_compared = 0
        #: Of those, partitions that received records.
        self.after_pull_repaired = 0
        self.after_pull_records = 0

    async def round(self) -> None:
        """Compare one batch of partitions with one replica each; merge the differences."""
        ctx = self._ctx
        membership = ctx.membership
        unavailable = membership.suspected | membership.down
        plan = self._planner.next_round(membership.ring, ctx.n, self._readable, unavailable)
        outcome = await self._compare(plan)
        self.rounds += 1
        self.partitions_compared += outcome.compared
        self.partitions_repaired += outcome.repaired
        self.records_received += outcome.records
        log = logger.info if outcome.records else logger.debug
        log(
            "node %s: anti-entropy round compared %d partition(s), repaired %d (%d records)",
            ctx.me,
            outcome.compared,
            outcome.repaired,
            outcome.records,
        )

    async def after_pull(self, partitions: list[int]) -> set[int]:
        """Compare ``partitions``, whose pull just finished, with *every* other available
        replica (see :mod:`._after_pull`); returns the partitions not compared with all of
        them (retried later)."""
        ctx = self._ctx
        membership = ctx.membership
        ring = membership.ring
        unavailable = membership.suspected | membership.down
        plan: dict[str, list[int]] = {}
        alone: set[int] = set()
        for p in partitions:
            others = [
                n for n in ring.preference_list(p, ctx.n) if n != ctx.me and n not in unavailable
            ]
            if not others:
                alone.add(p)  # nobody to compare with now: try again later
            for peer in others:
                plan.setdefault(peer, []).append(p)
        outcome = await self._compare(plan)
        failed = outcome.failed | alone
        done = [p for p in partitions if p not in failed]
        self.after_pull_compared += len(done)
        self.after_pull_repaired += len(outcome.received.intersection(done))
        self.after_pull_records += outcome.records
        log = logger.info if outcome.records else logger.debug
        log(
            "node %s: %d partition(s) that received writes while pulled compared with their "
            "replicas after the pull (%d records received, %d to retry)",
            ctx.me,
            len(done),
            outcome.records,
            len(failed),
        )
        return failed

    async def _compare(self, plan: dict[str, list[int]]) -> _Outcome:
        """Compare each peer's partitions of ``plan`` with it; merge what differs."""
        ctx = self._ctx
        outcome = _Outcome()
        sem = asyncio.Semaphore(ctx.cfg.sync_concurrency)
        for peer, parts in plan.items():
            try:
                remote = await ctx.fetch_digests(peer, parts)
            except (PeerRingError, ValueError) as exc:
                logger.debug("anti-entropy with %s skipped: %s", peer, exc)
                outcome.failed.update(parts)
                continue
            outcome.compared += len(parts)

            async def one(p: int, entry: RemotePartition, peer: str = peer) -> int | None:
                async with sem:
                    return await ctx.merge_from(peer, p, entry.digests)

            # Only the partitions that differ get a task: a round's equal partitions (the
            # common case, hundreds of them) cost no coroutine, task or loop turn each.
            differ = [
                (p, entry)
                for p in parts
                if (entry := remote.get(p)) is not None
                and entry.state is not HoldState.NONE
                and not entry.equal
            ]
            results = await asyncio.gather(*(one(p, entry) for p, entry in differ))
            for (p, _), got in zip(differ, results, strict=True):
                if got is None:
                    outcome.failed.add(p)
                elif got:
                    outcome.repaired += 1
                    outcome.records += got
                    outcome.received.add(p)
        return outcome


@dataclass(slots=True)
class _Outcome:
    """What one comparison of partitions with peers found."""

    compared: int = 0
    repaired: int = 0
    records: int = 0
    #: Partitions that received records.
    received: set[int] = field(default_factory=set)
    #: Partitions whose digests or records could not be fetched from some peer.
    failed: set[int] = field(default_factory=set)
