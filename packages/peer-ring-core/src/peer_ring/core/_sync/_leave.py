"""Graceful leave: what a leaving node hands to whom, and the report of how it went.

A node that leaves (``PeerRing.leave``, called by ``peer-ring-kv serve`` on SIGTERM)
tells every peer; each peer removes it from its ring, pulls the partitions it gains (from
the leaving node, which is still up and complete, and from the other replicas) and then
acknowledges. The leaving node exits when every peer acknowledged or the deadline passed,
and reports what may not have been handed off. riak_core does the same with ownership
handoff before a node leaves the ring.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from peer_ring.core._ring import Ring


def _empty() -> Mapping[str, int]:
    return MappingProxyType({})


def _empty_errors() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class LeaveReport:
    """The outcome of ``PeerRing.leave``.

    Attributes:
        acknowledged: peers that pulled every partition they gain from the leave.
        failed: peers that could not be told or did not answer in time, with the reason.
        not_handed_off: peer -> partitions it gains but had not confirmed when the node
            left (partitions of failed peers included). Their records still exist on the
            other replicas; the peers pull them from there.
        elapsed: seconds the leave took.
    """

    acknowledged: tuple[str, ...] = ()
    failed: Mapping[str, str] = field(default_factory=_empty_errors)
    not_handed_off: Mapping[str, int] = field(default_factory=_empty)
    elapsed: float = 0.0

    @property
    def complete(self) -> bool:
        """True when every peer confirmed every partition it gains."""
        return not self.failed and not any(self.not_handed_off.values())


def gains_after_leave(ring: Ring, leaver: str, replication: int) -> dict[str, int]:
    """How many partitions each remaining member gains when ``leaver`` leaves ``ring``."""
    rest = [m for m in ring.members if m != leaver]
    if not rest:
        return {}
    diff = ring.diff(ring.without(leaver), replication)  # keeps the members' zones
    return {node: len(parts) for node, parts in diff.gained.items()}
