"""The queue of updates waiting to be gossiped, each sent a bounded number of times.

Like memberlist's ``TransmitLimitedQueue``: a newer update about a member replaces any
queued one about the same member; updates sent fewer times go first (newest first among
equals), and each is dropped after ``limit`` transmissions, ``limit`` being
``ceil(retransmit_mult * ln(n + 1))`` for the current cluster size ``n``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class _Entry:
    key: str
    data: bytes
    urgent: bool
    id: int
    transmits: int = 0


class BroadcastQueue:
    """Pending encoded updates, keyed by the member they are about."""

    def __init__(self) -> None:
        self._by_key: dict[str, _Entry] = {}
        self._next_id = 0

    def __len__(self) -> int:
        return len(self._by_key)

    def queue(self, key: str, data: bytes, *, urgent: bool = False) -> None:
        """Add the update ``data`` about member ``key``, replacing any older one about it."""
        self._next_id += 1
        self._by_key[key] = _Entry(key, data, urgent, self._next_id)

    def pending(self, key: str) -> bytes | None:
        """The update queued about ``key``, if any."""
        entry = self._by_key.get(key)
        return None if entry is None else entry.data

    def take(self, budget: int, overhead: int, limit: int) -> list[bytes]:
        """Updates that fit in ``budget`` bytes (each costing ``overhead`` more), counted as
        sent once; those sent ``limit`` times leave the queue."""
        if not self._by_key:
            return []
        order = sorted(self._by_key.values(), key=lambda e: (e.transmits, -e.id))
        out: list[bytes] = []
        used = 0
        for entry in order:
            cost = len(entry.data) + overhead
            if used + cost > budget:
                if budget - used < overhead + 8:
                    break
                continue
            used += cost
            out.append(entry.data)
            entry.transmits += 1
            if entry.transmits >= limit:
                del self._by_key[entry.key]
        return out

    def clear(self) -> None:
        """Forget every pending update."""
        self._by_key.clear()
