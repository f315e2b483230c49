"""Placement algorithms of the ring: the claim, preference lists, and their zone-aware forms.

Pure functions over tuples of member names; :class:`peer_ring.core._ring.Ring` calls them
once per view (and once per replication factor) and caches the result. The rules are those
of ``docs/hash-spec.md`` (sections "Claim", "Preference lists" and "Zones"); keep the two in
step.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Final

import farmhash

from peer_ring.core._errors import InvalidArgumentError

# How many best-scoring candidates per partition enter the first, globally sorted pass of
# the claim. Nearly every partition is claimed by one of its first few candidates; one that
# is refused by all of them (a few hundred candidates in all at n=100, none at n=10) falls
# back to a heap that yields its further candidates in exactly the global order, so the
# result equals the plain algorithm of the spec (a test compares the two). Sorting P*8
# instead of P*n packed ints halves the n=100 build; the rest is hashing the P*n scores.
_FIRST_PASS: Final = 8

_fingerprint64: Callable[[bytes | str], int] = farmhash.fingerprint64


def claim(
    members: tuple[str, ...], partitions: int, parts: Sequence[int] | None = None
) -> list[int]:
    """Assign every partition to a member; return the owner's index in ``members``.

    With ``parts`` (ascending partition numbers), only those partitions are claimed, as if
    they were the whole ring (the zone-aware claim runs this once per zone); the result is
    then indexed like ``parts``.

    The spec (``docs/hash-spec.md``, "Claim"): with ``q, r = divmod(P, n)``, walk every
    (partition, node) pair by descending ``score = fingerprint64(f"{p}:{node}")`` (ties:
    lower partition first, then lower node), and give ``p`` to ``node`` when ``p`` is free
    and ``node`` holds fewer than ``q`` partitions, or exactly ``q`` while fewer than ``r``
    nodes hold ``q + 1``. Every node ends with ``q`` or ``q + 1`` partitions.

    ``members`` must be sorted, distinct, and no more than the partitions claimed.
    """
    numbers: Sequence[int] = range(partitions) if parts is None else parts
    partitions = len(numbers)
    n = len(members)
    q, r = divmod(partitions, n)
    fingerprint = _fingerprint64
    # Pack (score, partition, node) into one int so that sorting compares ints only, and so
    # that *descending* int order is the spec's order: score descending, then partition
    # ascending, then node ascending (hence the complements in the low bits).
    node_bits = (n - 1).bit_length()
    part_bits = (partitions - 1).bit_length()
    node_mask = (1 << node_bits) - 1
    part_mask = (1 << part_bits) - 1
    shift = node_bits + part_bits
    encoded = [(m.encode("utf-8"), node_mask - i) for i, m in enumerate(members)]
    first_pass = min(_FIRST_PASS, n)

    rows: list[list[int]] = []  # per partition: all its candidates, best first
    first: list[int] = []  # the best ``first_pass`` candidates of every partition
    for p in range(partitions):
        prefix = b"%d:" % numbers[p]
        low = (part_mask - p) << node_bits
        row = [(fingerprint(prefix + m) << shift) | low | tail for m, tail in encoded]
        row.sort(reverse=True)
        rows.append(row)
        first += row[:first_pass]
    first.sort(reverse=True)

    owner = [-1] * partitions
    held = [0] * n
    extra = r  # how many more nodes may still reach q + 1
    left = partitions
    queued = [first_pass] * partitions  # how many of each row entered the candidate stream
    later: list[int] = []  # max-heap (negated) of candidates beyond the first pass

    def offer(cand: int) -> None:
        nonlocal extra, left
        p = part_mask - ((cand >> node_bits) & part_mask)
        if owner[p] >= 0:
            return
        i = node_mask - (cand & node_mask)
        c = held[i]
        if c < q or (c == q and extra > 0):
            if c == q:
                extra -= 1
            owner[p] = i
            held[i] = c + 1
            left -= 1
            return
        # Refused: a node that is full stays full, so the plain algorithm would simply go
        # on to p's next candidate. If this was the last one of p in the stream, queue the
        # next. (It cannot run out: all nodes full means all P partitions are claimed.)
        k = queued[p]
        if rows[p][k - 1] == cand:
            queued[p] = k + 1
            heapq.heappush(later, -rows[p][k])

    for cand in first:
        while later and -later[0] > cand:
            offer(-heapq.heappop(later))
        offer(cand)
        if not left:
            return owner
    while left:
        offer(-heapq.heappop(later))
    return owner


def preference_lists(owners: tuple[str, ...], n: int) -> tuple[tuple[str, ...], ...]:
    """Preference lists of length ``n`` for every partition.

    ``n`` must not exceed the number of distinct owners. Rather than walking the ring from
    every partition, derive each list from its successor's: the list of ``p`` is ``owner(p)``
    followed by the list of ``p + 1`` without ``owner(p)``, cut to ``n`` (the first ``n - 1``
    distinct nodes other than ``owner(p)`` met from ``p + 1`` on are exactly those).
    """
    size = len(owners)
    walk: list[str] = []
    j = size - 1
    while len(walk) < n:
        node = owners[j % size]
        if node not in walk:
            walk.append(node)
        j += 1
    lists: list[tuple[str, ...]] = [()] * size
    following = lists[size - 1] = tuple(walk)
    for p in range(size - 2, -1, -1):
        node = owners[p]
        if following[0] == node:
            current = following
        elif node in following:
            i = following.index(node)
            current = (node, *following[:i], *following[i + 1 :])
        else:
            current = (node, *following[: n - 1])
        lists[p] = following = current
    return tuple(lists)


# -- zone-aware placement (docs/hash-spec.md, "Zones") ----------------------------------------


def effective_zones(
    members: tuple[str, ...], zones: Mapping[str, str] | None
) -> Mapping[str, str] | None:
    """member -> zone for every member, or None when fewer than two distinct zones."""
    if not zones:
        return None
    labels: dict[str, str] = {}
    for node in members:
        zone = zones.get(node, "")
        if not isinstance(zone, str):
            raise InvalidArgumentError(f"the zone of {node!r} must be a str, got {zone!r}")
        labels[node] = zone
    if len(set(labels.values())) < 2:
        return None  # one zone is no constraint: keep the zone-less placement exactly
    return MappingProxyType(labels)


def sorted_zones(zones: Mapping[str, str]) -> list[str]:
    return sorted(set(zones.values()), key=lambda z: z.encode("utf-8"))


def claim_zoned(
    members: tuple[str, ...], partitions: int, zones: Mapping[str, str]
) -> tuple[str, ...]:
    """Zone ``k`` (of ``Z`` sorted zones) claims partitions ``k, k + Z, k + 2Z...``.

    Within a zone, its members claim its partitions with the plain balance-capped claim
    (same scores, same tie-breaks). Rotating zones along the ring makes any ``Z``
    consecutive partitions belong to ``Z`` distinct zones, so the clockwise walk of a
    preference list meets every zone early, and with equal-sized zones every member ends
    with an equal share of primaries *and* of replicas.
    """
    names = sorted_zones(zones)
    count = len(names)
    owners: list[str] = [""] * partitions
    for k, zone in enumerate(names):
        local = tuple(m for m in members if zones[m] == zone)  # stays sorted
        parts = range(k, partitions, count)
        if len(local) > len(parts):
            raise InvalidArgumentError(
                f"zone {zone!r} has {len(local)} members but only {len(parts)} of the "
                f"{partitions} partitions (one in {count}): every member must own one"
            )
        for i, owner in enumerate(claim(local, partitions, parts)):
            owners[parts[i]] = local[owner]
    return tuple(owners)


def zoned_preference_lists(
    owners: tuple[str, ...], n: int, zones: Mapping[str, str]
) -> tuple[tuple[str, ...], ...]:
    """Preference lists of length ``n`` that cover ``min(n, Z)`` zones.

    For each partition: walk clockwise and take each member whose zone is not yet in the
    list until ``min(n, Z)`` zones are in; then walk again from the partition and take the
    first members not yet taken until the list holds ``n``. The list is ordered by where
    each member was first met in the walk, so the owner stays first.
    """
    size = len(owners)
    want_zones = min(n, len(set(zones.values())))
    lists: list[tuple[str, ...]] = []
    for p in range(size):
        first: dict[str, int] = {}  # chosen member -> first position in the walk
        seen: set[str] = set()
        j = p
        while len(seen) < want_zones:
            node = owners[j % size]
            zone = zones[node]
            if zone not in seen:
                seen.add(zone)
                first[node] = j
            j += 1
        j = p
        while len(first) < n:
            node = owners[j % size]
            if node not in first:
                first[node] = j
            j += 1
        lists.append(tuple(sorted(first, key=first.__getitem__)))
    return tuple(lists)
