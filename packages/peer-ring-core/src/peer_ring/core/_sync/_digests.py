"""Partition digests: comparing two replicas of a partition without moving its records.

A partition's digest is the list of ``DIGEST_BUCKETS`` bucket digests each namespace's
``DataHooks.digest_partition`` returns, and its *root* is one 64-bit hash over all of
them: a two-level Merkle tree (Dynamo §4.7) whose leaves are the buckets. Replicas first
compare roots (8 bytes per partition), then bucket digests only for the partitions whose
roots differ, then move only the records of the buckets that differ. Pure functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum

from peer_ring.core._hashing import fingerprint64
from peer_ring.core._hooks import DIGEST_BUCKETS

#: Digests of one partition: namespace -> ``DIGEST_BUCKETS`` bucket digests.
NamespaceDigests = Mapping[str, Sequence[bytes]]


class HoldState(IntEnum):
    """What a node holds of a partition, as reported in a digests answer."""

    #: The node neither replicates nor holds the partition (it may still have stray data).
    NONE = 0
    #: The node replicates the partition but has not finished pulling it: partial data.
    PENDING = 1
    #: The node holds a complete copy (it replicates it and is synced, or it lost it and
    #: keeps it until the new replicas confirmed the handoff).
    COMPLETE = 2


@dataclass(frozen=True, slots=True)
class RemotePartition:
    """One partition as another node described it.

    Attributes:
        partition: the partition.
        state: what the node holds of it.
        equal: the node's root equals the root we sent: nothing to move.
        digests: its bucket digests per namespace (empty when ``equal``).
    """

    partition: int
    state: HoldState
    equal: bool
    digests: NamespaceDigests


def partition_root(digests: NamespaceDigests) -> int:
    """The root hash of a partition's digests; 0 when every bucket of every namespace
    is empty, so that two empty replicas compare equal without any exchange."""
    if not any(any(buckets) for buckets in digests.values()):
        return 0
    parts: list[bytes] = []
    for namespace in sorted(digests):
        parts.append(namespace.encode() + b"\0")
        parts.extend(len(d).to_bytes(2, "big") + d for d in digests[namespace])
    return fingerprint64(b"".join(parts)) or 1


def differing_buckets(local: Sequence[bytes], remote: Sequence[bytes]) -> list[int]:
    """Buckets whose digests differ (a missing digest counts as an empty bucket)."""
    out = []
    for bucket in range(DIGEST_BUCKETS):
        a = local[bucket] if bucket < len(local) else b""
        b = remote[bucket] if bucket < len(remote) else b""
        if a != b:
            out.append(bucket)
    return out


def buckets_to_pull(local: Sequence[bytes], remote: Sequence[bytes]) -> list[int]:
    """Buckets worth pulling from ``remote``: they differ and ``remote`` has records there.

    A bucket that is empty on the remote side differs when we have records it lacks,
    but pulling it would bring nothing: the other side repairs itself when it compares
    with us (anti-entropy runs on every replica).
    """
    return [b for b in differing_buckets(local, remote) if b < len(remote) and remote[b] != b""]


def is_empty(digests: NamespaceDigests) -> bool:
    """True when no namespace holds any record in the partition."""
    return all(d == b"" for buckets in digests.values() for d in buckets)
