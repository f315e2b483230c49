"""The ring: fixed partitions, claimed by nodes, and preference lists.

The key space is cut into ``P`` fixed, equal partitions (``fingerprint64(key) % P``), which
play the role of the virtual nodes of a consistent-hash ring, as in Riak's ``chash``. Nodes
*claim* partitions with a balance-capped rendezvous (highest-random-weight) assignment, so
that every node owns ``P // n`` or ``P // n + 1`` partitions and the whole table is a pure
function of ``(member set, P)``: every peer that sees the same view computes the same
owners, with no coordination. A partition's preference list (Dynamo paper, section 4.3) is
its owner followed by the owners of the next partitions clockwise, skipping nodes already in
the list, until it holds ``n`` distinct nodes.

**Zones.** When the members carry at least two distinct zones (``Member.metadata["zone"]``,
passed as ``zones=``), placement becomes zone-aware: partition ``p`` is claimed only by the
members of zone ``zones[p % Z]`` (zones sorted, ``Z`` of them), with the same balance-capped
rendezvous within the zone, so consecutive partitions rotate through the zones; and a
preference list first takes, walking clockwise, one member of each zone not yet in the list
until ``min(N, Z)`` zones are in it, then fills up with the walk's next members. So a
partition's replicas are never two in one zone while another zone has none. With zero or
one distinct zone the ring is exactly the zone-less one.

The exact algorithm, with test vectors, is written down in ``docs/hash-spec.md`` so that a
client in another language can compute owners; keep the two in step.

A :class:`Ring` is immutable and does no I/O. Preference lists are computed lazily, once
per replication factor, and then served from a tuple: :meth:`Ring.partition_for_key`,
:meth:`Ring.owner` and :meth:`Ring.preference_list` are on the request hot path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

import farmhash

from peer_ring.core._errors import InvalidArgumentError
from peer_ring.core._placement import (
    claim,
    claim_zoned,
    effective_zones,
    preference_lists,
    zoned_preference_lists,
)

__all__ = ["DEFAULT_PARTITIONS", "PartitionChange", "Ring", "RingDiff"]

#: Default number of partitions. All members of a cluster must use the same value.
#:
#: Trade-off (measured with ``tools/ring-stats``, see ``docs/hash-spec.md``): more partitions
#: bring the data moved when a node joins or leaves closer to the ideal ``1/(n+1)`` on large
#: clusters, but cost build time and per-partition work (anti-entropy digests, handoff
#: streams). 2048 keeps movement within ~1.2x of ideal up to ~10 nodes and ~3x at 100, and
#: builds a 100-node ring in ~0.1 s.
DEFAULT_PARTITIONS: Final = 2048

# Rings rebuilt from the same view are shared; views change rarely, so a few suffice.
_BUILD_CACHE_SIZE: Final = 64

# ``_hashing.partition_for_key`` inlined: on the request hot path the extra call costs
# about as much as the hash itself (a test checks the two agree).
_fingerprint64: Callable[[bytes | str], int] = farmhash.fingerprint64


@dataclass(frozen=True, slots=True)
class PartitionChange:
    """How one partition's preference list differs between two rings.

    Attributes:
        partition: the partition.
        before: its preference list in the old ring.
        after: its preference list in the new ring.
    """

    partition: int
    before: tuple[str, ...]
    after: tuple[str, ...]

    @property
    def added(self) -> frozenset[str]:
        """Nodes that replicate the partition only in the new ring (they must receive it)."""
        return frozenset(self.after).difference(self.before)

    @property
    def removed(self) -> frozenset[str]:
        """Nodes that replicate the partition only in the old ring (they may drop it)."""
        return frozenset(self.before).difference(self.after)

    @property
    def kept(self) -> tuple[str, ...]:
        """Old replicas that stay replicas, in old preference order (handoff sources)."""
        return tuple(node for node in self.before if node in self.after)

    @property
    def owner_changed(self) -> bool:
        """Whether the primary (first node of the list) differs."""
        return self.before[0] != self.after[0]


@dataclass(frozen=True, slots=True)
class RingDiff:
    """The data movement between two rings at one replication factor.

    Built by :meth:`Ring.diff`. ``gained`` and ``lost`` drive rebalancing: a node pulls the
    partitions it gained (from the old replicas, see :attr:`PartitionChange.kept`) and may
    drop the partitions it lost once the new replicas hold them.

    Attributes:
        replication: the preference-list length the diff was computed at.
        changes: every partition whose preference list changed (new replicas, removed
            replicas, or only a new order), by increasing partition.
        gained: node -> partitions it replicates in the new ring but not in the old one.
            Only nodes with at least one gained partition appear.
        lost: node -> partitions it replicates in the old ring but not in the new one.
            Only nodes with at least one lost partition appear.
    """

    replication: int
    changes: tuple[PartitionChange, ...]
    gained: Mapping[str, frozenset[int]]
    lost: Mapping[str, frozenset[int]]

    def gained_by(self, node: str) -> frozenset[int]:
        """Partitions ``node`` must receive (empty when none)."""
        return self.gained.get(node, frozenset())

    def lost_by(self, node: str) -> frozenset[int]:
        """Partitions ``node`` no longer replicates (empty when none)."""
        return self.lost.get(node, frozenset())

    @property
    def moved_replicas(self) -> int:
        """How many (partition, node) replicas must be copied to a node that lacks them."""
        return sum(len(parts) for parts in self.gained.values())

    def __bool__(self) -> bool:
        """True when any preference list changed."""
        return bool(self.changes)


class Ring:
    """An immutable assignment of ``partitions`` partitions to a set of member nodes.

    Args:
        members: node identities (``host:port`` addresses); order and duplicates do not
            matter. Must be non-empty and hold at most ``partitions`` distinct nodes.
        partitions: number of partitions ``P``; every member of a cluster must agree on it.
        zones: optional member -> zone (failure domain) labels. A member missing from the
            mapping is in zone ``""``; entries for non-members are ignored. With two or more
            distinct zones among the members the placement is zone-aware (see the module
            docstring); otherwise it is ignored and the ring equals the zone-less one.

    Raises:
        InvalidArgumentError: no members, an empty or non-``str`` member, ``partitions < 1``,
            more members than partitions (some node would own nothing), a non-``str`` zone,
            or a zone with more members than the partitions it is given (``P`` over the
            number of zones, rounded down or up).

    Example:
        >>> ring = Ring(["127.0.0.1:7101", "127.0.0.2:7101", "127.0.0.3:7101"])
        >>> p = ring.partition_for_key("user:1")
        >>> len(ring.preference_list(p, 3))
        3
    """

    __slots__ = (
        "_hash",
        "_lists",
        "_member_set",
        "_members",
        "_owners",
        "_partitions",
        "_shares",
        "_zone_key",
        "_zones",
    )

    def __init__(
        self,
        members: Iterable[str],
        partitions: int = DEFAULT_PARTITIONS,
        zones: Mapping[str, str] | None = None,
    ) -> None:
        nodes = _check_members(members)
        _check_partitions(partitions)
        if len(nodes) > partitions:
            raise InvalidArgumentError(
                f"a ring of {partitions} partitions cannot hold {len(nodes)} members: "
                "every member must own at least one partition"
            )
        self._members: tuple[str, ...] = tuple(sorted(nodes))
        self._member_set = frozenset(nodes)
        self._partitions = partitions
        # member -> zone, only when the placement is zone-aware (>= 2 distinct zones).
        self._zones: Mapping[str, str] | None = effective_zones(self._members, zones)
        if self._zones is None:
            self._owners: tuple[str, ...] = tuple(
                self._members[i] for i in claim(self._members, partitions)
            )
            self._zone_key: tuple[tuple[str, str], ...] = ()
        else:
            self._owners = claim_zoned(self._members, partitions, self._zones)
            self._zone_key = tuple(sorted(self._zones.items()))
        self._hash = hash((self._members, partitions, self._zone_key))
        # Caches keyed by the requested replication n (several n may share one entry).
        self._lists: dict[int, tuple[tuple[str, ...], ...]] = {1: tuple((o,) for o in self._owners)}
        self._shares: dict[int, Mapping[str, frozenset[int]]] = {}

    @classmethod
    def build(
        cls,
        members: Iterable[str],
        partitions: int = DEFAULT_PARTITIONS,
        zones: Mapping[str, str] | None = None,
    ) -> Ring:
        """Return the ring of ``members``, shared with earlier calls for the same set.

        Membership views rebuild rings often, and mostly for member sets seen before (a
        node flaps, or every peer reports the same change); a small LRU cache keyed by the
        member *set* (and the members' zones) makes those rebuilds free. Prefer it to the
        constructor.
        """
        nodes = frozenset(_check_members(members))
        key = effective_zones(tuple(sorted(nodes)), zones)
        zone_items = frozenset(key.items()) if key is not None else frozenset()
        return _build_cached(nodes, _check_partitions(partitions), zone_items)

    # -- identity -----------------------------------------------------------------------

    @property
    def partitions(self) -> int:
        """The number of partitions ``P``."""
        return self._partitions

    @property
    def members(self) -> tuple[str, ...]:
        """The member nodes, sorted (by code point, which is UTF-8 byte order)."""
        return self._members

    @property
    def owners(self) -> tuple[str, ...]:
        """The partition table: ``owners[p]`` is the primary of partition ``p``."""
        return self._owners

    @property
    def zone_aware(self) -> bool:
        """Whether the placement spreads replicas over zones (members in >= 2 zones)."""
        return self._zones is not None

    def zone_of(self, node: str) -> str:
        """The zone the placement uses for ``node`` (``""`` when zones are not in use)."""
        return self._zones.get(node, "") if self._zones is not None else ""

    def __len__(self) -> int:
        """The number of members."""
        return len(self._members)

    def __contains__(self, node: object) -> bool:
        """Whether ``node`` is a member."""
        return node in self._member_set

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ring):
            return NotImplemented
        return (
            self._partitions == other._partitions
            and self._members == other._members
            and self._zone_key == other._zone_key
        )

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        shown = ", ".join(self._members[:4]) + (", ..." if len(self._members) > 4 else "")
        return f"Ring([{shown}] ({len(self._members)} members), partitions={self._partitions})"

    # -- lookups (hot path) ------------------------------------------------------------------

    def partition_for_key(self, key: bytes | str) -> int:
        """The partition of ``key``: ``fingerprint64(key) % partitions`` (UTF-8 for ``str``)."""
        return _fingerprint64(key) % self._partitions

    def owner(self, partition: int) -> str:
        """The primary node of ``partition``.

        Raises:
            InvalidArgumentError: ``partition`` is not in ``range(partitions)``.
        """
        if 0 <= partition < self._partitions:
            return self._owners[partition]
        raise self._bad_partition(partition)

    def preference_list(self, partition: int, n: int) -> tuple[str, ...]:
        """The first ``min(n, len(ring))`` distinct nodes responsible for ``partition``.

        The owner comes first, then the owners of ``partition + 1``, ``partition + 2``...
        (modulo ``partitions``), each node once.

        Raises:
            InvalidArgumentError: ``n < 1`` or ``partition`` is out of range.
        """
        lists = self._lists.get(n)
        if lists is None:
            lists = self._lists_for(n)
        if 0 <= partition < self._partitions:
            return lists[partition]
        raise self._bad_partition(partition)

    def partitions_of(self, node: str, n: int) -> frozenset[int]:
        """Partitions whose preference list of length ``n`` contains ``node``.

        ``n=1`` gives the partitions ``node`` owns. A node that is not a member holds none.

        Raises:
            InvalidArgumentError: ``n < 1``.
        """
        return self._shares_for(n).get(node, frozenset())

    def without(self, *nodes: str) -> Ring:
        """The ring of the same cluster after ``nodes`` left (same ``P``, same zones).

        Raises:
            InvalidArgumentError: no member would remain.
        """
        rest = [m for m in self._members if m not in nodes]
        return Ring.build(rest, self._partitions, self._zones)

    # -- data movement ---------------------------------------------------------------------

    def diff(self, other: Ring, n: int) -> RingDiff:
        """What changes, at replication ``n``, when the cluster moves from this ring to ``other``.

        Raises:
            InvalidArgumentError: the rings have different partition counts, or ``n < 1``.
        """
        if other._partitions != self._partitions:
            raise InvalidArgumentError(
                f"cannot diff rings of {self._partitions} and {other._partitions} partitions"
            )
        before, after = self._lists_for(n), other._lists_for(n)
        changes: list[PartitionChange] = []
        gained: dict[str, set[int]] = {}
        lost: dict[str, set[int]] = {}
        for partition, (old, new) in enumerate(zip(before, after, strict=True)):
            if old == new:
                continue
            changes.append(PartitionChange(partition, old, new))
            for node in new:
                if node not in old:
                    gained.setdefault(node, set()).add(partition)
            for node in old:
                if node not in new:
                    lost.setdefault(node, set()).add(partition)
        return RingDiff(
            replication=n,
            changes=tuple(changes),
            gained=_freeze(gained),
            lost=_freeze(lost),
        )

    # -- internals ---------------------------------------------------------------------------

    def _lists_for(self, n: int) -> tuple[tuple[str, ...], ...]:
        lists = self._lists.get(n)
        if lists is not None:
            return lists
        _check_replication(n)
        effective = min(n, len(self._members))
        lists = self._lists.get(effective)
        if lists is None:
            if self._zones is None:
                lists = preference_lists(self._owners, effective)
            else:
                lists = zoned_preference_lists(self._owners, effective, self._zones)
            self._lists[effective] = lists
        # Racing threads may both compute; the results are equal, so either may win.
        self._lists[n] = lists
        return lists

    def _shares_for(self, n: int) -> Mapping[str, frozenset[int]]:
        shares = self._shares.get(n)
        if shares is None:
            acc: dict[str, list[int]] = {node: [] for node in self._members}
            for partition, nodes in enumerate(self._lists_for(n)):
                for node in nodes:
                    acc[node].append(partition)
            shares = MappingProxyType({node: frozenset(ps) for node, ps in acc.items()})
            self._shares[n] = shares
        return shares

    def _bad_partition(self, partition: int) -> InvalidArgumentError:
        return InvalidArgumentError(
            f"partition {partition!r} is out of range for a ring of {self._partitions} partitions"
        )


@functools.lru_cache(maxsize=_BUILD_CACHE_SIZE)
def _build_cached(
    members: frozenset[str], partitions: int, zones: frozenset[tuple[str, str]]
) -> Ring:
    return Ring(members, partitions, dict(zones) if zones else None)


def _check_members(members: Iterable[str]) -> set[str]:
    # A lone address string is iterable too; without this check it would become a ring
    # of one-character "nodes".
    if isinstance(members, (str, bytes)):
        raise InvalidArgumentError(f"members must be a collection of addresses, not {members!r}")
    nodes = set(members)
    if not nodes:
        raise InvalidArgumentError("a ring needs at least one member")
    for node in nodes:
        if not isinstance(node, str) or not node:
            raise InvalidArgumentError(f"a member must be a non-empty str, got {node!r}")
        try:
            node.encode("utf-8")
        except UnicodeEncodeError as exc:  # lone surrogates have no UTF-8 form to hash
            raise InvalidArgumentError(f"member {node!r} is not valid Unicode") from exc
    return nodes


def _check_partitions(partitions: int) -> int:
    if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
        raise InvalidArgumentError(f"partitions must be an int >= 1, got {partitions!r}")
    return partitions


def _check_replication(n: int) -> None:
    # Not on the hot path: only reached the first time a ring sees a given n.
    if not isinstance(n, int) or n < 1:
        raise InvalidArgumentError(f"replication n must be an int >= 1, got {n!r}")


def _freeze(acc: dict[str, set[int]]) -> Mapping[str, frozenset[int]]:
    return MappingProxyType({node: frozenset(ps) for node, ps in sorted(acc.items())})
