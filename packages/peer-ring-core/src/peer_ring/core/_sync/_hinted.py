"""Hinted handoff (Dynamo §4.6): keep writes meant for an unreachable replica, deliver
them when it answers again, or give them to the key's current replicas when it is out of
the ring. The bookkeeping is :class:`~peer_ring.core._sync._hints.HintStore`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from peer_ring.core._sync._context import LocalWriteFn, SyncContext
from peer_ring.core._sync._hints import Hint
from peer_ring.core._types import Request, Response, Status

logger = logging.getLogger(__name__)


class HintedHandoff:
    """Stores hinted writes and delivers them.

    Args:
        ctx: the node's sync context.
        local_write: runs a write on this node (a hint redirected to this node).
    """

    def __init__(self, ctx: SyncContext, local_write: LocalWriteFn) -> None:
        self._ctx = ctx
        self._local_write = local_write
        self._delivering: set[str] = set()

    def store(self, request: Request) -> Response:
        """Keep a hinted write for its intended replica."""
        ctx = self._ctx
        hint = Hint(
            request.hint,
            request.namespace,
            request.command,
            request.key,
            request.payload,
            request.partition,
            ctx.clock.monotonic(),
        )
        if not ctx.hints.add(hint):
            return Response(
                Status.OVERLOADED, b"", f"hint store of {ctx.me} is full ({len(ctx.hints)})"
            )
        return Response(Status.OK, b"", "")

    def start_due(self, now: float) -> None:
        """Expire old hints; start a delivery task per due, reachable target."""
        ctx = self._ctx
        ctx.hints.expire(now)
        ring = ctx.membership.ring
        for target in ctx.hints.due_targets(now):
            if target in self._delivering:
                continue
            if target in ring and ctx.membership.is_suspected(target):
                continue
            self._delivering.add(target)
            ctx.spawn(self.deliver(target), "peer-ring-hints")

    async def deliver(self, target: str) -> None:
        """Deliver ``target``'s hints, batch by batch, until one fails."""
        ctx = self._ctx
        delivered = 0
        try:
            while True:
                batch = ctx.hints.head(target, ctx.cfg.hint_batch)
                if not batch:
                    break
                if target in ctx.membership.ring:
                    ok = await self._deliver_batch(target, batch)
                else:
                    ok = await self._redirect_batch(batch)
                delivered += sum(1 for h in batch if ok.get(id(h)))
                if not all(ok.get(id(h)) for h in batch):
                    break
        finally:
            self._delivering.discard(target)
            if delivered:
                logger.info(
                    "node %s: delivered %d hinted write(s) for %s (%d left)",
                    ctx.me,
                    delivered,
                    target,
                    ctx.hints.pending().get(target, 0),
                )

    async def _deliver_batch(self, target: str, batch: list[Hint]) -> dict[int, bool]:
        ctx = self._ctx
        timeout = ctx.cfg.request_timeout
        futs = [
            ctx.transport.request(
                target, Request(h.namespace, h.command, h.key, h.payload, h.partition, "", timeout)
            )
            for h in batch
        ]
        results = await asyncio.gather(*futs, return_exceptions=True)
        now = ctx.clock.monotonic()
        ok: dict[int, bool] = {}
        unreachable = False
        for hint, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                unreachable = True
                ok[id(hint)] = False
            elif result.status == Status.OK:
                ctx.hints.delivered(hint)
                ok[id(hint)] = True
            else:
                ctx.hints.refused(hint, now, result.error)
                ok[id(hint)] = False
        if unreachable:
            ctx.peer_failed(target)
            ctx.hints.unreachable(target, now)
        else:
            ctx.peer_ok(target)
        return ok

    async def _redirect_batch(self, batch: list[Hint]) -> dict[int, bool]:
        """The intended replica is out of the ring (down or left): give each hinted write
        to the key's current replicas instead, so that it is not lost with the hint."""
        ctx = self._ctx
        ring = ctx.membership.ring
        timeout = ctx.cfg.request_timeout
        ok: dict[int, bool] = {}
        now = ctx.clock.monotonic()
        for hint in batch:
            nodes = ring.preference_list(ring.partition_for_key(hint.key), ctx.n)
            waits: list[Awaitable[object]] = []
            for node in nodes:
                if node == ctx.me:
                    waits.append(
                        self._local_write(hint.namespace, hint.command, hint.key, hint.payload)
                    )
                else:
                    request = Request(
                        hint.namespace,
                        hint.command,
                        hint.key,
                        hint.payload,
                        hint.partition,
                        "",
                        timeout,
                    )
                    waits.append(ctx.transport.request(node, request))
            results = await asyncio.gather(*waits, return_exceptions=True)
            good = all(
                not isinstance(r, BaseException)
                and (not isinstance(r, Response) or r.status == Status.OK)
                for r in results
            )
            ok[id(hint)] = good
            if good:
                ctx.hints.delivered(hint)
            else:
                ctx.hints.unreachable(hint.target, now)
        return ok
