"""The ``local-estimate`` fail policy: a node decides alone against its fair share.

Bound (owner mode, per key): while the owner is unreachable *or only slower than
``timeout``* (a forwarded hit that timed out is ambiguous: the owner may still decide and
count it), each other node admits at most its fair share ``ceil(limit / nodes)`` of the
key per window of the key's algorithm, on top of what the owner admits. Over one window
the cluster therefore admits at most ``limit + (nodes - 1) * ceil(limit / nodes)``
(about twice the limit), whatever the reason the owner did not answer.
"""

from __future__ import annotations

import dataclasses
import math

from peer_ring.ratelimit._algorithms import decide, expires_at
from peer_ring.ratelimit._decision import Decision
from peer_ring.ratelimit._limit import Limit
from peer_ring.ratelimit._policy import FailPolicy
from peer_ring.ratelimit._state import State


def fair_share(limit: Limit, nodes: int) -> Limit:
    """``limit`` divided among ``nodes`` (each at least 1), for local estimates."""
    burst = None if limit.burst is None else max(1, math.ceil(limit.burst / nodes))
    return dataclasses.replace(limit, limit=max(1, math.ceil(limit.limit / nodes)), burst=burst)


class LocalEstimates:
    """This node's estimate states, each kept until it is equivalent to no state."""

    def __init__(self) -> None:
        self._states: dict[bytes, tuple[State, float]] = {}

    def decide(self, kb: bytes, limit: Limit, cost: int, nodes: int, now: float) -> Decision:
        """Decide ``cost`` hits of ``kb`` against this node's fair share of ``limit``."""
        share = fair_share(limit, max(1, nodes))
        held = self._states.get(kb)
        new, d = decide(None if held is None else held[0], share, cost, now)
        if new is None:
            self._states.pop(kb, None)
        else:
            self._states[kb] = (new, expires_at(new, share, now))
        return dataclasses.replace(d, limit=limit.limit, source=FailPolicy.LOCAL_ESTIMATE.value)

    def sweep(self, now: float) -> int:
        """Forget expired estimates; returns how many. Only expired ones: forgetting a live
        estimate would grant its fair share again within the same window."""
        expired = [k for k, (_, exp) in self._states.items() if exp <= now]
        for kb in expired:
            del self._states[kb]
        return len(expired)
