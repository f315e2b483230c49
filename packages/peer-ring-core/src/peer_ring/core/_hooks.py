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

from collections.abc import Collection, Iterable, Mapping, Sequence
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

    def apply_records(self, partition: int, records: Sequence[bytes]) -> int | None:
        """Merge records received from another replica into local storage (idempotent).

        May return how many of ``records`` changed local storage (were newer or missing
        here); the core counts it as ``records_applied`` in ``sync_status()``, which is
        how an operator sees how much of what moved was needed. ``None``: not counted.
        """
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


@runtime_checkable
class VersionedDataHooks(Protocol):
    """Optional hooks that let the core move only the records that differ.

    Without them, the core transfers every record of each digest bucket that differs,
    even when a single key of the bucket does. With them, the receiving node sends the
    source its *version list* of the differing buckets (a 64-bit key id and the version of
    each record it holds) and the source sends back only the records that are missing or
    older on the receiver. Implement them on the same object as :class:`DataHooks`; the
    core uses them when both nodes have them and falls back to whole buckets otherwise.
    """

    def record_versions(
        self, partition: int, buckets: Collection[int]
    ) -> Iterable[tuple[int, bytes]]:
        """Yield ``(key id, version)`` for every record of ``partition`` in ``buckets``.

        The key id is a 64-bit hash of the key (the same function on every node); the
        version is opaque bytes (at most 65,535) that :meth:`export_newer` on another node
        can compare with its own records. Records that :meth:`DataHooks.export_partition`
        leaves out must be left out here too.
        """
        ...

    def export_newer(
        self, partition: int, buckets: Collection[int], known: Mapping[int, bytes]
    ) -> Iterable[bytes]:
        """Yield the records of ``partition`` in ``buckets`` that the receiver lacks.

        ``known`` maps key ids to the receiver's versions (from its
        :meth:`record_versions`). Yield a record when its key id is not in ``known`` or
        when it wins the merge over the receiver's version; never leave out a record
        whose state differs from the receiver's unless the receiver's wins (otherwise the
        replicas' digests would differ forever). Same format as ``export_partition``.
        """
        ...
