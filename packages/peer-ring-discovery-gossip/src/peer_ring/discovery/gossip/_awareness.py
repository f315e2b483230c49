"""Lifeguard local health awareness: a node that misses its own deadlines slows itself down.

The score rises when this node fails a probe without hearing the nacks it expected (so the
fault is more likely its own) and when it has to refute a suspicion of itself; it falls with
each successful probe. Probe interval and timeouts are multiplied by ``score + 1``, up to
``max_multiplier``: a CPU-starved or overloaded node then waits longer before it accuses
others, instead of flooding the cluster with false suspicions.
"""

from __future__ import annotations


class Awareness:
    """The local health score (0 = healthy).

    Args:
        max_multiplier: the largest factor timeouts are scaled by; 1 disables awareness.
    """

    __slots__ = ("_max", "score")

    def __init__(self, max_multiplier: int) -> None:
        self._max = max(1, max_multiplier)
        self.score = 0

    def apply(self, delta: int) -> None:
        """Add ``delta`` to the score, kept within ``[0, max_multiplier - 1]``."""
        self.score = min(self._max - 1, max(0, self.score + delta))

    def scale(self, seconds: float) -> float:
        """``seconds`` multiplied by the current health factor."""
        return seconds * (self.score + 1)
