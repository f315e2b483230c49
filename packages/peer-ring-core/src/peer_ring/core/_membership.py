"""The node's view of the cluster: members, the ring built from them, and suspicion.

Pure state, no I/O: the node feeds it discovery snapshots and transport reachability
reports, and reads the current :class:`Ring` from it. Suspicion is *local*: a peer this
node cannot reach is skipped as a coordinator target hint, but stays in the ring (the ring
changes only when discovery says the member set changed), so that every node computes the
same owners (Dynamo §4.8: membership changes are explicit, failures are transient).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from peer_ring.core._clock import Clock
from peer_ring.core._ring import Ring
from peer_ring.core._types import Member

logger = logging.getLogger(__name__)

#: Called with (old ring, new ring) after the member set changed.
RingListener = Callable[[Ring, Ring], None]


class Membership:
    """Current members, ring and locally suspected peers of one node."""

    def __init__(
        self, self_address: str, partitions: int, clock: Clock, suspicion_timeout: float
    ) -> None:
        self.self_address = self_address
        self._partitions = partitions
        self._clock = clock
        self._suspicion_timeout = suspicion_timeout
        self._members: dict[str, Member] = {self_address: Member(self_address)}
        self._ring = Ring.build([self_address], partitions)
        self._suspected: dict[str, float] = {}
        self._listeners: list[RingListener] = []

    @property
    def ring(self) -> Ring:
        """The ring computed from the current member set."""
        return self._ring

    @property
    def members(self) -> dict[str, Member]:
        """Current members by address (a copy)."""
        return dict(self._members)

    def add_listener(self, listener: RingListener) -> None:
        """Call ``listener(old, new)`` whenever the ring changes."""
        self._listeners.append(listener)

    def update(self, members: Iterable[Member]) -> bool:
        """Apply a discovery snapshot; returns True when the member set changed.

        This node is always kept in its own view: discovery may lag behind the node's
        own start (a pod not yet published), and a node must own its share meanwhile.
        """
        new = {m.address: m for m in members}
        new.setdefault(self.self_address, self._members[self.self_address])
        changed = set(new) != set(self._members)
        self._members = new
        for gone in set(self._suspected) - set(new):
            del self._suspected[gone]
        if changed:
            old = self._ring
            self._ring = Ring.build(new.keys(), self._partitions)
            logger.info(
                "membership changed: %d members (+%s -%s)",
                len(new),
                sorted(set(new) - set(old.members)),
                sorted(set(old.members) - set(new)),
            )
            for listener in list(self._listeners):
                listener(old, self._ring)
        return changed

    def suspect(self, address: str) -> None:
        """Record that the transport could not reach ``address``."""
        if address in self._members and address != self.self_address:
            if address not in self._suspected:
                logger.info("peer %s suspected unreachable", address)
            self._suspected[address] = self._clock.monotonic()

    def clear(self, address: str) -> None:
        """Record that ``address`` answered again."""
        if self._suspected.pop(address, None) is not None:
            logger.info("peer %s reachable again", address)

    def is_suspected(self, address: str) -> bool:
        """True while ``address`` is suspected and its suspicion has not expired."""
        since = self._suspected.get(address)
        if since is None:
            return False
        if self._clock.monotonic() - since > self._suspicion_timeout:
            del self._suspected[address]
            return False
        return True

    @property
    def suspected(self) -> frozenset[str]:
        """Peers currently suspected."""
        return frozenset(a for a in list(self._suspected) if self.is_suspected(a))
