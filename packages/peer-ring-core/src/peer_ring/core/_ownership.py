"""Ownership change notifications: which partitions this node gained or lost.

Applications with state outside the data-movement hooks (a rate limiter's leases, a
pub-sub's subscriber sessions) subscribe with ``PeerRing.add_ownership_listener``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from peer_ring.core._ring import Ring

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OwnershipChange:
    """What changed for this node in one ring change (or at start).

    Attributes:
        gained: partitions this node replicates now (at ``config.replication``) and did not.
        lost: partitions this node replicated and no longer does.
        primary_gained: partitions whose preference list this node now heads.
        primary_lost: partitions whose preference list this node no longer heads.
        ring: the new ring.
    """

    gained: frozenset[int]
    lost: frozenset[int]
    primary_gained: frozenset[int]
    primary_lost: frozenset[int]
    ring: Ring


#: ``listener(change)``; called inline on the event loop, so keep it fast.
OwnershipListener = Callable[[OwnershipChange], None]

_EMPTY: frozenset[int] = frozenset()


class OwnershipTracker:
    """Computes this node's partitions per ring and notifies listeners of changes."""

    def __init__(self, address: str, replication: int) -> None:
        self._address = address
        self._replication = replication
        self._listeners: list[OwnershipListener] = []
        self._owned: frozenset[int] = _EMPTY
        self._primary: frozenset[int] = _EMPTY
        self._ring: Ring | None = None

    @property
    def owned(self) -> frozenset[int]:
        """Partitions this node replicates in the last ring seen."""
        return self._owned

    def add_listener(self, listener: OwnershipListener) -> None:
        """Register ``listener``; when a ring was already seen, tell it at once."""
        self._listeners.append(listener)
        if self._ring is not None and (self._owned or self._primary):
            self._call(
                listener, OwnershipChange(self._owned, _EMPTY, self._primary, _EMPTY, self._ring)
            )

    def update(self, ring: Ring) -> None:
        """Recompute for ``ring``; notify listeners when this node's partitions changed."""
        first = self._ring is None
        self._ring = ring
        if self._address in ring:
            owned = ring.partitions_of(self._address, min(self._replication, len(ring)))
            primary = ring.partitions_of(self._address, 1)
        else:
            owned = primary = _EMPTY
        change = OwnershipChange(
            owned - self._owned,
            self._owned - owned,
            primary - self._primary,
            self._primary - primary,
            ring,
        )
        self._owned, self._primary = owned, primary
        if not first and not (
            change.gained or change.lost or change.primary_gained or change.primary_lost
        ):
            return
        for listener in list(self._listeners):
            self._call(listener, change)

    @staticmethod
    def _call(listener: OwnershipListener, change: OwnershipChange) -> None:
        try:
            listener(change)
        except Exception:  # one broken listener must not stop the others or the ring
            logger.exception("ownership listener %r failed", listener)
