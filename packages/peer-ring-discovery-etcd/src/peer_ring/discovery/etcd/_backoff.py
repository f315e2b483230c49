"""Exponential backoff with jitter for retrying etcd.

Pure: it only computes delays. Jitter matters: when etcd restarts, every node of every
peer-ring cluster reconnects; without jitter they would all retry in lockstep.
"""

from __future__ import annotations

import random


class Backoff:
    """Delays ``initial``, ``initial*multiplier``, ... capped at ``maximum``, each ±``jitter``.

    Args:
        initial: the first delay in seconds.
        maximum: the largest delay in seconds.
        multiplier: growth factor between consecutive failures.
        jitter: relative spread; 0.2 draws each delay uniformly within ±20 %.
        rng: source of randomness (seed it in tests for reproducible delays).

    Raises:
        ValueError: inconsistent bounds.
    """

    def __init__(
        self,
        initial: float = 0.2,
        maximum: float = 2.0,
        multiplier: float = 2.0,
        jitter: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        if initial <= 0 or maximum < initial or multiplier < 1 or not 0 <= jitter < 1:
            raise ValueError(
                "backoff needs 0 < initial <= maximum, multiplier >= 1 and 0 <= jitter < 1"
            )
        self._initial = initial
        self._maximum = maximum
        self._multiplier = multiplier
        self._jitter = jitter
        self._rng = rng or random.Random()
        self._next = initial

    @property
    def maximum(self) -> float:
        """The largest delay before jitter."""
        return self._maximum

    def next(self) -> float:
        """The delay before the next attempt; grows until :meth:`reset`."""
        base = self._next
        self._next = min(self._maximum, self._next * self._multiplier)
        spread = base * self._jitter
        return max(0.0, base + self._rng.uniform(-spread, spread))

    def reset(self) -> None:
        """Forget past failures (call after a success)."""
        self._next = self._initial
