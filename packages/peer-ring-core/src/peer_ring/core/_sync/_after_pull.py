"""Partitions to compare with their replicas right after their pull: the bookkeeping.

A replica still pulling a partition may refuse its writes (the KV store does: it cannot
know which version it should refuse, so it must not count toward the quorum). In a
cluster of exactly N nodes no other node can stand in for it, so a write acknowledged by
the W others never reaches it, and if the pull had already passed that key, the copy is
stale once the pull finishes. Read repair rarely reaches it (reads ask a quorum) and the
periodic anti-entropy walks every partition only every few minutes.

So every partition that received a mutating command while it was pending here is
remembered, and compared with its other replicas (digests, then only what differs) as soon
as its pull has finished: the copy converges within seconds of becoming readable. The core
cannot tell whether the application stored or refused such a write; comparing a partition
that stored it costs one root comparison per replica.

Pure state, no I/O: :class:`~peer_ring.core._sync._manager.SyncManager` runs the
comparisons (:meth:`~peer_ring.core._sync._repair.AntiEntropy.after_pull`). Bounded: at
most one entry per partition, removed when compared successfully or when the partition is
no longer replicated here.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

#: Seconds between a pull's end and the comparison. A write refused here was sent to the
#: other replicas at the same time; this leaves it time to land there first.
AFTER_PULL_DELAY = 0.5


class AfterPullRepairs:
    """Partitions that received a write while this node pulled them.

    Args:
        delay: seconds between a pull's end and the comparison.
        retry_after: seconds before a failed comparison is tried again.
    """

    def __init__(self, delay: float = AFTER_PULL_DELAY, retry_after: float = 5.0) -> None:
        self._delay = delay
        self._retry_after = retry_after
        #: Still pulling: compared once the pull is over.
        self._pulling: set[int] = set()
        #: Pulled: partition -> when to compare it.
        self._due: dict[int, float] = {}
        #: Partitions noted while pulling (monotonic).
        self.noted = 0

    def __len__(self) -> int:
        return len(self._pulling) + len(self._due)

    def note(self, partition: int) -> None:
        """A write of ``partition`` arrived while this node pulls it."""
        if partition not in self._pulling:
            self._pulling.add(partition)
            self._due.pop(partition, None)  # pending again: compare after this pull
            self.noted += 1

    def pulled(
        self, pending: Mapping[int, object], replicated: Collection[int], now: float
    ) -> list[int]:
        """Move the partitions whose pull is over to the due list; returns them.

        A partition that is no longer replicated here (lost while pulling) is forgotten:
        it is held and handed off, and its new replicas pull what differs from it.
        """
        if not self._pulling:
            return []
        done = [p for p in self._pulling if p not in pending]
        when = now + self._delay
        for p in done:
            self._pulling.discard(p)
            if p in replicated:
                self._due[p] = when
        return [p for p in done if p in self._due]

    def due(self, now: float, limit: int) -> list[int]:
        """Pulled partitions whose comparison is due, at most ``limit``, taken off the list
        (hand back the ones that failed with :meth:`failed`)."""
        out = [p for p, at in self._due.items() if at <= now][:limit]
        for p in out:
            del self._due[p]
        return out

    def failed(self, partitions: Collection[int], now: float) -> None:
        """Comparisons that did not complete: try them again after ``retry_after``."""
        when = now + self._retry_after
        for p in partitions:
            if p not in self._pulling:
                self._due[p] = when

    def next_due(self) -> float | None:
        """When the next comparison is due (None when none is waiting for a time)."""
        return min(self._due.values()) if self._due else None
