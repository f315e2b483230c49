"""Named one-shot timers for a pure state machine: the caller supplies the time.

Each timer has a key; scheduling a key again replaces the earlier one. ``due(now)`` pops
the expired timers in deadline order (ties in scheduling order), so a simulation that calls
it with a virtual clock is deterministic.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable


class Timers:
    """A set of keyed deadlines."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Hashable]] = []
        self._live: dict[Hashable, tuple[float, int]] = {}
        self._seq = 0

    def set(self, key: Hashable, at: float) -> None:
        """Fire ``key`` at ``at`` (replacing an earlier schedule of the same key)."""
        self._seq += 1
        self._live[key] = (at, self._seq)
        heapq.heappush(self._heap, (at, self._seq, key))

    def cancel(self, key: Hashable) -> None:
        """Forget ``key`` (no effect if not scheduled)."""
        self._live.pop(key, None)

    def when(self, key: Hashable) -> float | None:
        """The deadline of ``key``, or None."""
        entry = self._live.get(key)
        return None if entry is None else entry[0]

    def next_deadline(self) -> float | None:
        """The earliest live deadline, or None."""
        heap = self._heap
        while heap:
            at, seq, key = heap[0]
            if self._live.get(key) == (at, seq):
                return at
            heapq.heappop(heap)
        return None

    def pop_due(self, now: float) -> tuple[Hashable, float] | None:
        """Remove and return one expired key and its deadline (earliest first), or None."""
        heap = self._heap
        while heap:
            at, seq, key = heap[0]
            if self._live.get(key) != (at, seq):
                heapq.heappop(heap)
                continue
            if at > now:
                return None
            heapq.heappop(heap)
            del self._live[key]
            return key, at
        return None
