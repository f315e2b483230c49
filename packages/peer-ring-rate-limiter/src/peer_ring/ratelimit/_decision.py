"""The :class:`Decision` returned for every hit."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one hit.

    Attributes:
        allowed: whether the hit was admitted (for a peek, cost 0: whether a hit of cost 1
            would be admitted now; a refund, negative cost, is always allowed).
        limit: the limit's hit count (``Limit.limit``).
        remaining: how many hits of cost 1 would be admitted right now, after this one.
        reset_after: seconds until the key is back to its initial, unused state.
        retry_after: seconds until the same hit would be admitted; 0 when allowed,
            ``math.inf`` when its cost exceeds the limit's capacity.
        source: ``"owner"`` (decided by the key's owner), ``"global"`` (from a local replica
            of the state), or the fail policy used when the owner was unreachable
            (``"fail-open"``, ``"fail-closed"``, ``"local-estimate"``).
    """

    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float = 0.0
    source: str = "owner"

    @property
    def retry_after_seconds(self) -> int | None:
        """``retry_after`` rounded up to whole seconds for headers; None if never."""
        if math.isinf(self.retry_after):
            return None
        return max(0, math.ceil(self.retry_after))
