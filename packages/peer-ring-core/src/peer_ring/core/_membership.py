"""The node's view of the cluster: members, the ring built from them, and suspicion.

Pure state, no I/O: the node feeds it discovery snapshots, transport reachability reports,
probe results and leave notices, and reads the current :class:`Ring` from it.

Three layers of "who is in the cluster":

* **discovered** members: what the discovery module reports (a static list, pods...).
* **suspected** peers: this node could not reach them recently. Suspicion is *local* and
  transient: it only steers the coordinator (sloppy quorum, Dynamo §4.6), it does not
  change the ring, so a short hiccup moves no data.
* **effective** members, which the ring is built from: discovered, minus peers that were
  suspected without interruption for longer than ``down_after`` (marked *down*: a static
  member list never shrinks on its own, so without this a dead node would hold a share of
  the replicas forever), minus peers that announced a graceful leave (*left*). A down
  peer comes back as soon as it answers; a left peer comes back when it restarts (a new
  incarnation). Dynamo §4.8 makes membership changes explicit; here they are explicit
  *per node*, from what the node observes, and converge because every node probes every
  peer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet

from peer_ring.core._clock import Clock
from peer_ring.core._ring import Ring
from peer_ring.core._types import Member

logger = logging.getLogger(__name__)

#: Called with (old ring, new ring) after the effective member set changed.
RingListener = Callable[[Ring, Ring], None]
#: Called with a peer's address when it departs: discovery no longer lists it, or it
#: announced a graceful leave. Not called for suspected or down peers (they may be back).
DepartureListener = Callable[[str], None]


class Membership:
    """Discovered, suspected, down and left peers of one node, and the resulting ring."""

    def __init__(
        self, self_address: str, partitions: int, clock: Clock, suspicion_timeout: float
    ) -> None:
        self.self_address = self_address
        self._partitions = partitions
        self._clock = clock
        self._suspicion_timeout = suspicion_timeout
        self._discovered: dict[str, Member] = {self_address: Member(self_address)}
        self._ring = Ring.build([self_address], partitions)
        # peer -> (first failure of the current streak, last failure), monotonic seconds.
        self._suspected: dict[str, tuple[float, float]] = {}
        self._down: set[str] = set()
        # The same two containers, read by the request path to skip the per-request
        # failure-detector calls while no peer is suspected or down (the common case):
        # ``if membership.suspects or membership.downs``. Never reassigned, only mutated.
        self.suspects: Mapping[str, tuple[float, float]] = self._suspected
        self.downs: AbstractSet[str] = self._down
        self._left: dict[str, int] = {}  # peer -> incarnation that left
        self._listeners: list[RingListener] = []
        self._departure_listeners: list[DepartureListener] = []

    # -- views -------------------------------------------------------------------------

    @property
    def ring(self) -> Ring:
        """The ring computed from the effective member set."""
        return self._ring

    @property
    def members(self) -> dict[str, Member]:
        """Effective members (those in the ring) by address (a copy)."""
        ring = self._ring
        return {a: m for a, m in self._discovered.items() if a in ring}

    @property
    def discovered(self) -> dict[str, Member]:
        """Every member discovery reports, including down and left ones (a copy)."""
        return dict(self._discovered)

    @property
    def down(self) -> frozenset[str]:
        """Peers removed from the ring because they stayed unreachable too long."""
        return frozenset(self._down)

    @property
    def left(self) -> frozenset[str]:
        """Peers removed from the ring because they announced a graceful leave."""
        return frozenset(self._left)

    def is_down(self, address: str) -> bool:
        """Whether ``address`` is marked down (cheap: for the request path)."""
        return address in self._down

    def left_incarnation(self, address: str) -> int | None:
        """The incarnation of ``address`` that left, or None when it did not leave."""
        return self._left.get(address)

    def add_listener(self, listener: RingListener) -> None:
        """Call ``listener(old, new)`` whenever the ring changes."""
        self._listeners.append(listener)

    def add_departure_listener(self, listener: DepartureListener) -> None:
        """Call ``listener(address)`` when a peer departs (see :data:`DepartureListener`).

        It is called after the ring listeners, so that data movement already planned
        around the departure (the transport connection to the peer can then be closed).
        """
        self._departure_listeners.append(listener)

    # -- discovery ---------------------------------------------------------------------

    def update(self, members: Iterable[Member]) -> bool:
        """Apply a discovery snapshot; returns True when the ring changed.

        This node is always kept in its own view: discovery may lag behind the node's
        own start (a pod not yet published), and a node must own its share meanwhile.
        """
        # In address order, not the snapshot's: discoveries return sets, whose order
        # follows string hashing (PYTHONHASHSEED), and probes and the other per-peer loops
        # go through the members in this dict's order; a seeded run must replay anywhere.
        new = {m.address: m for m in sorted(members, key=_address)}
        new.setdefault(self.self_address, self._discovered[self.self_address])
        departed = sorted(set(self._discovered) - set(new))
        self._discovered = new
        for gone in set(self._suspected) - set(new):
            del self._suspected[gone]
        self._down &= set(new)
        for gone in set(self._left) - set(new):
            del self._left[gone]
        changed = self._rebuild()
        for address in departed:
            self._departed(address)
        return changed

    # -- down / left -------------------------------------------------------------------

    def mark_down(self, address: str) -> bool:
        """Remove ``address`` from the ring (it stayed unreachable); True if it changed."""
        if address == self.self_address or address not in self._discovered:
            return False
        if address in self._down:
            return False
        self._down.add(address)
        logger.warning(
            "peer %s is down (unreachable for %.1fs): removed from the ring",
            address,
            self.suspected_for(address),
        )
        return self._rebuild()

    def mark_up(self, address: str) -> bool:
        """Put a down peer back in the ring (it answered again); True if it changed."""
        if address not in self._down:
            return False
        self._down.discard(address)
        logger.info("peer %s answers again: back in the ring", address)
        return self._rebuild()

    def mark_left(self, address: str, incarnation: int) -> bool:
        """Remove ``address`` (incarnation ``incarnation``) after it announced a leave."""
        if address == self.self_address or address not in self._discovered:
            return False
        if self._left.get(address) == incarnation:
            return False
        self._left[address] = incarnation
        logger.info("peer %s is leaving: removed from the ring", address)
        changed = self._rebuild()
        self._departed(address)
        return changed

    def forget_left(self, address: str) -> bool:
        """Put a peer that had left back in the ring (it started again)."""
        if self._left.pop(address, None) is None:
            return False
        logger.info("peer %s started again after leaving: back in the ring", address)
        return self._rebuild()

    def _rebuild(self) -> bool:
        effective = [a for a in self._discovered if a not in self._down and a not in self._left]
        old = self._ring
        # A member's zone (discovery metadata) is part of the placement: a relabelled
        # member changes the ring even when the member set stays the same.
        zones = {a: self._discovered[a].metadata.get("zone", "") for a in effective}
        ring = Ring.build(effective, self._partitions, zones)
        if ring == old:
            return False
        self._ring = ring
        logger.info(
            "ring changed: %d members (+%s -%s)",
            len(effective),
            sorted(set(effective) - set(old.members)),
            sorted(set(old.members) - set(effective)),
        )
        for listener in list(self._listeners):
            listener(old, self._ring)
        return True

    def _departed(self, address: str) -> None:
        for listener in list(self._departure_listeners):
            try:
                listener(address)
            except Exception:
                # A listener's bug must not stop the view from applying later snapshots.
                logger.exception("departure listener failed for %s", address)

    # -- suspicion ---------------------------------------------------------------------

    def suspect(self, address: str) -> None:
        """Record that a request to (or a probe of) ``address`` failed."""
        if address == self.self_address or address not in self._discovered:
            return
        now = self._clock.monotonic()
        streak = self._suspected.get(address)
        if streak is None or now - streak[1] > self._suspicion_timeout:
            # A new streak: "down" needs *continuous* suspicion (see suspected_for).
            logger.info("peer %s suspected unreachable", address)
            self._suspected[address] = (now, now)
        else:
            self._suspected[address] = (streak[0], now)

    def clear(self, address: str) -> bool:
        """Record that ``address`` answered; returns True when it was suspected."""
        if self._suspected.pop(address, None) is not None:
            logger.info("peer %s reachable again", address)
            return True
        return False

    def is_suspected(self, address: str) -> bool:
        """True while ``address`` is suspected and its last failure is recent enough."""
        streak = self._suspected.get(address)
        if streak is None:
            return False
        if self._clock.monotonic() - streak[1] > self._suspicion_timeout:
            del self._suspected[address]
            return False
        return True

    def maybe_suspected(self, address: str) -> bool:
        """Cheap check for the request path: a suspicion is recorded (maybe expired)."""
        return address in self._suspected

    def suspected_for(self, address: str) -> float:
        """Seconds ``address`` has been suspected without interruption (0 when it is not)."""
        if not self.is_suspected(address):
            return 0.0
        return self._clock.monotonic() - self._suspected[address][0]

    @property
    def suspected(self) -> frozenset[str]:
        """Peers currently suspected."""
        return frozenset(a for a in list(self._suspected) if self.is_suspected(a))


def _address(member: Member) -> str:
    return member.address
