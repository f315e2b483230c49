"""Both sides of a graceful leave (the plan and the report are in :mod:`._leave`)."""

from __future__ import annotations

import asyncio
import logging

from peer_ring.core._errors import InvalidArgumentError
from peer_ring.core._sync._context import SyncContext
from peer_ring.core._sync._detector import FailureDetector
from peer_ring.core._sync._leave import LeaveReport, gains_after_leave
from peer_ring.core._sync._wire import decode_u32, decode_u64, encode_u32, encode_u64

logger = logging.getLogger(__name__)


class Leaver:
    """Leaves the cluster for this node, and serves the leave of peers."""

    def __init__(self, ctx: SyncContext, detector: FailureDetector) -> None:
        self._ctx = ctx
        self._detector = detector
        self.left = False
        self.report: LeaveReport | None = None

    @property
    def state(self) -> str:
        """``"none"``, ``"leaving"`` or ``"left"``."""
        if self.left:
            return "left"
        return "leaving" if self._ctx.leaving else "none"

    async def leave(self, deadline: float) -> LeaveReport:
        """Tell every peer this node leaves and wait (up to ``deadline`` seconds) until
        they pulled what they gain. Does not stop the node."""
        if deadline <= 0:
            raise InvalidArgumentError(f"deadline must be > 0, got {deadline}")
        ctx = self._ctx
        ctx.leaving = True
        start = ctx.clock.monotonic()
        ring = ctx.membership.ring
        gains = gains_after_leave(ring, ctx.me, ctx.n)
        peers = [m for m in ring.members if m != ctx.me]
        logger.info(
            "node %s leaving: handing %d partition replica(s) to %d peer(s) (deadline %.0fs)",
            ctx.me,
            sum(gains.values()),
            len(peers),
            deadline,
        )
        payload = encode_u64(ctx.incarnation)
        results = await asyncio.gather(
            *(ctx.ask(peer, "leaving", payload, deadline) for peer in peers),
            return_exceptions=True,
        )
        acknowledged: list[str] = []
        failed: dict[str, str] = {}
        missing: dict[str, int] = {}
        for peer, result in zip(peers, results, strict=True):
            if isinstance(result, BaseException):
                failed[peer] = f"{type(result).__name__}: {result}"
                if gains.get(peer):
                    missing[peer] = gains[peer]
                continue
            try:
                remaining = decode_u32(result)
            except (ValueError, IndexError):
                remaining = gains.get(peer, 0)
            if remaining:
                missing[peer] = remaining
            else:
                acknowledged.append(peer)
        report = LeaveReport(
            tuple(sorted(acknowledged)),
            dict(sorted(failed.items())),
            dict(sorted(missing.items())),
            ctx.clock.monotonic() - start,
        )
        self.left = True
        self.report = report
        if report.complete:
            logger.info(
                "node %s left: every peer confirmed its partitions in %.1fs",
                ctx.me,
                report.elapsed,
            )
        else:
            logger.warning(
                "node %s left without a complete handoff: failed peers %s, partitions not "
                "confirmed %s (the other replicas still hold them)",
                ctx.me,
                sorted(failed),
                dict(missing),
            )
        return report

    async def serve(self, source: str, payload: bytes, timeout: float) -> bytes:
        """``source`` leaves: take it out of the ring, pull what we gain, then answer."""
        ctx = self._ctx
        incarnation = decode_u64(payload)
        before = ctx.membership.ring
        self._detector.note_leaving(source, incarnation)
        after = ctx.membership.ring
        gained = after.partitions_of(ctx.me, ctx.n) - before.partitions_of(ctx.me, ctx.n)
        ctx.wake.set()
        # Answer a little before the leaver's deadline, so that it hears how far we got.
        if timeout <= 0:
            timeout = ctx.cfg.handoff_timeout
        budget = max(timeout - min(1.0, timeout * 0.1), 0.0)
        deadline = ctx.clock.monotonic() + budget
        while True:
            remaining = [p for p in gained if p in ctx.table.pending]
            left = deadline - ctx.clock.monotonic()
            if not remaining or left <= 0:
                break
            await ctx.wait_progress(left)
        if remaining:
            logger.warning(
                "%s left before %d partition(s) were pulled; they stay pending",
                source,
                len(remaining),
            )
        return encode_u32(len(remaining))
