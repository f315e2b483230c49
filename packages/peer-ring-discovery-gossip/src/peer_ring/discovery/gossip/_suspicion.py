"""Lifeguard dynamic suspicion timeout: starts long, shrinks with independent confirmations.

A suspicion raised by one node alone runs for the maximum timeout, giving the suspect time to
hear of it and refute; each further member that independently suspects the same node (a
*confirmation*) shortens it, down to the minimum once ``k`` confirmations arrived:

    timeout(c) = max(min, max - log(c + 1) / log(k + 1) * (max - min))

which is memberlist's ``remainingSuspicionTime``. Pure: the owner asks for the deadline.
"""

from __future__ import annotations

import math


class Suspicion:
    """One suspicion of one member, as seen by this node.

    Args:
        sender: who raised it (counts as the first, not as a confirmation).
        k: confirmations needed to reach the minimum timeout (< 1: always the minimum).
        low: minimum timeout (seconds).
        high: maximum timeout (seconds).
        start: when it started (this node's clock).
    """

    __slots__ = ("_confirmed", "high", "k", "low", "start")

    def __init__(self, sender: str, k: int, low: float, high: float, start: float) -> None:
        self.k = k
        self.low = low
        self.high = high
        self.start = start
        self._confirmed = {sender}

    @property
    def confirmations(self) -> int:
        """Independent confirmations counted so far (the original sender excluded)."""
        return len(self._confirmed) - 1

    def timeout(self) -> float:
        """The current total timeout, from ``start``."""
        if self.k < 1:
            return self.low
        frac = math.log(self.confirmations + 1) / math.log(self.k + 1)
        return max(self.low, self.high - frac * (self.high - self.low))

    def deadline(self) -> float:
        """When the suspect is declared dead unless it refutes first."""
        return self.start + self.timeout()

    def confirm(self, sender: str) -> bool:
        """Count ``sender``'s suspicion; True if it was new (and the deadline moved)."""
        if self.confirmations >= self.k or sender in self._confirmed:
            return False
        self._confirmed.add(sender)
        return True
