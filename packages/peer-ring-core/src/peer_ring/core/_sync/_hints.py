"""Hinted handoff bookkeeping (Dynamo §4.6): writes held for a replica that was down.

When a preferred replica of a write is unreachable, the coordinator sends the write to the
next healthy node of the ring walk with ``Request.hint = <intended replica>``. That
substitute keeps the request here — not in the application's storage, which would then
hold a key of a partition it does not replicate — acknowledges it (it counts toward W),
and replays it to the intended replica when that one answers again.

Pure state, no I/O: the delivery loop (:mod:`peer_ring.core._sync._manager`) asks which
targets are due, sends the oldest hints in order, and reports each outcome back. Bounded
in count and bytes; a hint older than ``ttl`` is dropped (and counted), because the
intended replica is then either gone for good or has been repaired by anti-entropy.
Only commands registered with ``kind="write"`` are hinted: replaying them must be
idempotent (the KV store's ``set`` is: last writer wins on the record's version).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

# Bytes accounted per hint on top of key and payload (object headers, strings, deque slot).
_OVERHEAD = 200


@dataclass(frozen=True, slots=True)
class Hint:
    """One write held for ``target``.

    Attributes:
        target: the replica the write was meant for.
        namespace / command / key / payload / partition: the original request.
        created: monotonic time the hint was stored.
    """

    target: str
    namespace: str
    command: str
    key: bytes
    payload: bytes
    partition: int
    created: float

    @property
    def size(self) -> int:
        """Bytes accounted for this hint."""
        return len(self.key) + len(self.payload) + _OVERHEAD


@dataclass(slots=True)
class _Queue:
    hints: deque[Hint] = field(default_factory=deque)
    failures: int = 0
    next_at: float = 0.0
    refusals: dict[Hint, int] = field(default_factory=dict)


@dataclass(slots=True)
class HintCounters:
    """Monotonic counters (for ``sync_status`` and metrics)."""

    stored: int = 0
    delivered: int = 0
    dropped_expired: int = 0
    dropped_refused: int = 0
    rejected_full: int = 0


class HintStore:
    """Bounded per-target FIFO queues of hints with delivery backoff and a TTL.

    Args:
        max_hints: most hints held at once (all targets).
        max_bytes: most bytes held at once (see :attr:`Hint.size`).
        ttl: seconds a hint is kept.
        backoff_initial / backoff_max: delay before retrying a target after a failed
            delivery (doubling, capped).
        max_refusals: times a target may *refuse* (answer with an error, as opposed to
            being unreachable) one hint before that hint is dropped, so that one bad hint
            cannot block its queue until the TTL.
    """

    def __init__(
        self,
        max_hints: int,
        max_bytes: int,
        ttl: float,
        *,
        backoff_initial: float = 0.5,
        backoff_max: float = 10.0,
        max_refusals: int = 5,
    ) -> None:
        self._max_hints = max_hints
        self._max_bytes = max_bytes
        self._ttl = ttl
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._max_refusals = max_refusals
        self._queues: dict[str, _Queue] = {}
        self._count = 0
        self._bytes = 0
        self.counters = HintCounters()

    def __len__(self) -> int:
        return self._count

    @property
    def size_bytes(self) -> int:
        """Bytes accounted for all held hints."""
        return self._bytes

    def add(self, hint: Hint) -> bool:
        """Store ``hint``; False (and nothing stored) when the store is full."""
        size = hint.size
        if self._count >= self._max_hints or self._bytes + size > self._max_bytes:
            self.counters.rejected_full += 1
            return False
        queue = self._queues.get(hint.target)
        if queue is None:
            queue = self._queues[hint.target] = _Queue()
        queue.hints.append(hint)
        self._count += 1
        self._bytes += size
        self.counters.stored += 1
        return True

    def pending(self) -> dict[str, int]:
        """Hints held per target."""
        return {t: len(q.hints) for t, q in self._queues.items() if q.hints}

    def due_targets(self, now: float) -> list[str]:
        """Targets with hints whose delivery backoff has passed."""
        return [t for t, q in self._queues.items() if q.hints and q.next_at <= now]

    def head(self, target: str, limit: int) -> list[Hint]:
        """The oldest ``limit`` hints of ``target``, in the order they were stored."""
        queue = self._queues.get(target)
        if queue is None:
            return []
        return [queue.hints[i] for i in range(min(limit, len(queue.hints)))]

    def delivered(self, hint: Hint) -> None:
        """``hint`` reached its target: forget it."""
        if self._remove(hint):
            self.counters.delivered += 1
            queue = self._queues.get(hint.target)
            if queue is not None:
                queue.failures = 0

    def refused(self, hint: Hint, now: float, reason: str) -> None:
        """The target answered ``hint`` with an error (it is up but would not take it)."""
        queue = self._queues.get(hint.target)
        if queue is None:
            return
        refusals = queue.refusals.get(hint, 0) + 1
        if refusals >= self._max_refusals:
            if self._remove(hint):
                self.counters.dropped_refused += 1
                logger.warning(
                    "dropping a hint for %s after %d refusals: %s", hint.target, refusals, reason
                )
            return
        queue.refusals[hint] = refusals
        self.unreachable(hint.target, now)

    def unreachable(self, target: str, now: float) -> None:
        """Delivery to ``target`` failed: back off before the next attempt."""
        queue = self._queues.get(target)
        if queue is None:
            return
        queue.failures += 1
        delay = min(self._backoff_initial * 2 ** (queue.failures - 1), self._backoff_max)
        queue.next_at = now + delay

    def retry_now(self, target: str) -> None:
        """``target`` is reachable again: deliver without waiting for the backoff."""
        queue = self._queues.get(target)
        if queue is not None:
            queue.next_at = 0.0

    def expire(self, now: float) -> dict[str, int]:
        """Drop hints older than the TTL; returns how many were dropped per target."""
        dropped: dict[str, int] = {}
        for target, queue in self._queues.items():
            hints = queue.hints
            while hints and now - hints[0].created >= self._ttl:
                hint = hints.popleft()
                queue.refusals.pop(hint, None)
                self._count -= 1
                self._bytes -= hint.size
                dropped[target] = dropped.get(target, 0) + 1
        for target, count in dropped.items():
            self.counters.dropped_expired += count
            logger.warning(
                "dropped %d hint(s) for %s: older than the hint TTL (%.0fs)",
                count,
                target,
                self._ttl,
            )
        self._queues = {t: q for t, q in self._queues.items() if q.hints}
        return dropped

    def _remove(self, hint: Hint) -> bool:
        queue = self._queues.get(hint.target)
        if queue is None:
            return False
        try:
            queue.hints.remove(hint)  # almost always the head: O(1) in practice
        except ValueError:
            return False
        queue.refusals.pop(hint, None)
        self._count -= 1
        self._bytes -= hint.size
        if not queue.hints:
            del self._queues[hint.target]
        return True
