"""Delta transfers: moving only the records of a differing bucket that the receiver lacks.

Digests say *which buckets* differ; a bucket holds many keys, and under write load one
new write is enough to make it differ. A whole-bucket transfer then re-sends every record
of the bucket. With the optional :class:`~peer_ring.core.VersionedDataHooks`, the
receiver sends the source its *version list* of the differing buckets (``(key id,
version)`` per record it holds, see :func:`~peer_ring.core._sync._wire.encode_delta_request`)
and the source answers with the records that are missing or older there, within a byte
budget; the receiver applies them and asks again with its updated list while the source
says there is more. Pure functions: how to split the buckets into requests, and how much
of an answer fits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

#: Bytes of one version-list entry besides the version itself: key id u64, length u16.
ENTRY_OVERHEAD = 10
#: Largest version list sent in one request (bytes); buckets whose list is larger on
#: their own are transferred whole instead.
REQUEST_BUDGET = 1 << 20
#: Largest answer (record bytes) a source sends for one request; the receiver asks again.
#: Answers travel on the peers' request stream, so they are kept small (a bulk pull of
#: buckets the receiver holds nothing of uses the ``Transfer`` stream instead).
RESPONSE_BUDGET = 1 << 20
#: Answers saying "more" for one bucket before a merge fails (the pull is retried like any
#: failed transfer): bounds the exchange if an application keeps re-sending a record.
MAX_ROUNDS = 256
#: Largest version, in bytes (its length travels as a u16).
MAX_VERSION_BYTES = 0xFFFF


def entry_size(version: bytes) -> int:
    """Encoded size of one version-list entry."""
    return ENTRY_OVERHEAD + len(version)


def halves(buckets: Sequence[int]) -> list[list[int]]:
    """Split a bucket list whose version list is over the request budget in two."""
    mid = len(buckets) // 2
    return [list(buckets[:mid]), list(buckets[mid:])]


def take_within(records: Iterable[bytes], budget: int) -> tuple[list[bytes], bool]:
    """The first records whose total size fits ``budget`` (at least one, so that every
    answer makes progress), and whether any record was left out."""
    out: list[bytes] = []
    size = 0
    for record in records:
        if out and size + len(record) > budget:
            return out, True
        out.append(record)
        size += len(record)
    return out, False


def known_versions(entries: Sequence[tuple[int, bytes]]) -> dict[int, bytes]:
    """The receiver's version list as a lookup. A key id listed twice (a 64-bit hash
    collision of two keys) is left out, so the source sends the records of both keys
    rather than compare one key's record with the other key's version."""
    known: dict[int, bytes] = {}
    collided: set[int] = set()
    for key_id, version in entries:
        if key_id in known:
            collided.add(key_id)
        known[key_id] = version
    for key_id in collided:
        del known[key_id]
    return known
