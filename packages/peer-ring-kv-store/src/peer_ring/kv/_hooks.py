"""The core's data-movement hooks (``DataHooks``) implemented for the KV namespace.

The core moves partitions between nodes (pull on join, re-replication, handoff on leave,
anti-entropy) without knowing what a record is; these hooks translate between its opaque
``bytes`` records and :class:`KVEngine`. An exported record is one wire *entry*
(``peer_ring.kv._wire.encode_entry``: key + record), the same bytes a MULTI-SET carries.

The hooks are also :class:`~peer_ring.core.VersionedDataHooks`: a record's key id is the
key's ``fingerprint64`` and its version the encoded :class:`Version`, so a node that pulls
a differing bucket receives only the records it lacks or holds older, not the whole bucket.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence

from peer_ring.core import fingerprint64
from peer_ring.kv._engine import KVEngine
from peer_ring.kv._record import Record
from peer_ring.kv._versions import Version
from peer_ring.kv._wire import decode_entry, encode_entry

logger = logging.getLogger(__name__)


class KVHooks:
    """``DataHooks`` over a :class:`KVEngine`.

    Args:
        engine: the local store.
        on_record: called with every received record before it is merged; the store
            passes its ``HLC.update`` here so that its next writes order after the data it
            just received, even if its own wall clock is behind.
    """

    def __init__(
        self, engine: KVEngine, *, on_record: Callable[[Record], object] | None = None
    ) -> None:
        self._engine = engine
        self._on_record = on_record
        #: Records received for a partition other than the one they hash to (skipped).
        self.misplaced = 0

    def export_partition(
        self, partition: int, buckets: Collection[int] | None = None
    ) -> Iterator[bytes]:
        """Encoded entries of ``partition`` (tombstones included, expired values as
        tombstones, collected tombstones left out); only ``buckets`` when given.

        The partition is snapshotted by this call, before the first item is consumed.
        """
        # export_entries() takes the snapshot at once and encodes from the stored bytes.
        return self._engine.export_entries(partition, buckets)

    def record_versions(
        self, partition: int, buckets: Collection[int]
    ) -> Iterator[tuple[int, bytes]]:
        """``(fingerprint64(key), encoded version)`` of every record ``export_partition``
        would export from ``buckets`` (tombstones included)."""
        return (
            (fingerprint64(key), record.version.to_bytes())
            for key, record in self._engine.export(partition, buckets)
        )

    def export_newer(
        self, partition: int, buckets: Collection[int], known: Mapping[int, bytes]
    ) -> Iterator[bytes]:
        """Encoded entries of ``buckets`` whose key the receiver lacks or holds at a lower
        version (``known``: its :meth:`record_versions`).

        Raises:
            MalformedPayloadError: a version in ``known`` is not valid.
        """
        for key, record in self._engine.export(partition, buckets):
            theirs = known.get(fingerprint64(key))
            if theirs is None or Version.from_bytes(theirs) < record.version:
                yield encode_entry(key, record)

    def apply_records(self, partition: int, records: Sequence[bytes]) -> int:
        """Merge received entries by version (idempotent, any order); returns how many
        changed the store (newer than, or missing from, what it held).

        The batch is decoded entirely before anything is applied, so a malformed entry
        leaves the store untouched. Entries whose key belongs to another partition are
        skipped and counted in :attr:`misplaced`: stored, they would never be dropped
        with the partition that holds them.

        Raises:
            MalformedPayloadError: an entry is not valid.
        """
        entries = [decode_entry(record) for record in records]
        engine = self._engine
        on_record = self._on_record
        misplaced = 0
        changed = 0
        for key, record in entries:
            if engine.partition_of(key) != partition:
                misplaced += 1
                continue
            if on_record is not None:
                on_record(record)
            changed += engine.put(key, record)
        if misplaced:
            self.misplaced += misplaced
            logger.warning(
                "skipped %d record(s) sent for partition %d that belong to other partitions "
                "(do the nodes agree on the partition count?)",
                misplaced,
                partition,
            )
        return changed

    def drop_partition(self, partition: int) -> None:
        """Forget every record of ``partition``."""
        dropped = self._engine.drop(partition)
        logger.debug("dropped partition %d (%d records)", partition, dropped)

    def digest_partition(self, partition: int) -> Sequence[bytes]:
        """The partition's ``DIGEST_BUCKETS`` bucket digests (``b""`` when empty)."""
        return self._engine.digests(partition)
