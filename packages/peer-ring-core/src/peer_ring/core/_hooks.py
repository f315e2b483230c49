"""Data-movement hooks: the storage contract between an application and the core.

An application registers one :class:`DataHooks` per namespace with
``PeerRing.register_hooks``. The core never looks inside records: they are opaque bytes
that the application's ``export_partition`` produces and its ``apply_records`` consumes on
another node. With these four callbacks the core can drive every kind of data movement
(pull on join, re-replication after a loss, handoff on leave, anti-entropy), in the
manner of riak_core's vnode handoff callbacks.

Records must be *self-describing and mergeable*: ``apply_records`` has to reconcile an
incoming record with what is stored (for the KV store: keep the higher version), because
the same record may arrive twice, late, or after a newer local write.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Protocol, runtime_checkable

#: Number of digest buckets per partition. A key's bucket is
#: ``peer_ring.core.bucket_for_key(key)``; anti-entropy compares bucket digests and only
#: transfers the buckets that differ (a one-level Merkle tree under a partition root).
DIGEST_BUCKETS = 64


@runtime_checkable
class DataHooks(Protocol):
    """Callbacks the core uses to move one namespace's data between nodes."""

    def export_partition(
        self, partition: int, buckets: Collection[int] | None = None
    ) -> Iterable[bytes]:
        """Yield every record of ``partition`` (only those in ``buckets`` when given).

        Tombstones are records too and must be exported, so deletes travel with the data.
        """
        ...

    def apply_records(self, partition: int, records: Sequence[bytes]) -> None:
        """Merge records received from another replica into local storage (idempotent)."""
        ...

    def drop_partition(self, partition: int) -> None:
        """Forget every record of ``partition`` (this node no longer replicates it)."""
        ...

    def digest_partition(self, partition: int) -> Sequence[bytes]:
        """Return ``DIGEST_BUCKETS`` digests, one per bucket, of the partition's records.

        Two replicas with identical records in a bucket must return identical digests for
        it regardless of insertion order; an empty bucket's digest is ``b""``.
        """
        ...
