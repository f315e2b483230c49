"""A minimal replicated application for tests of data movement: a versioned dict.

Keys map to ``(version, value)``; a write with a higher version wins (last writer wins), so
applying the same records twice, or in any order, converges. It implements the four
:class:`~peer_ring.core.DataHooks`, which is all the core needs to move an application's
data: tests built on it check the core's mechanisms (pulls, handoff, hints, anti-entropy)
for *any* application, without a real store.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Iterable, Sequence

from peer_ring.core import (
    DIGEST_BUCKETS,
    Command,
    CommandContext,
    PeerRing,
    bucket_for_key,
    fingerprint64,
    partition_for_key,
)

__all__ = ["VersionedDict", "versioned_payload"]

_REC = struct.Struct(">QH")  # version, key length


def versioned_payload(version: int, value: bytes) -> bytes:
    """The payload of :attr:`VersionedDict.PUT`: an 8-byte big-endian version, then the value.

    Args:
        version: the write's version (higher wins).
        value: the value.

    Returns:
        The payload.
    """
    return version.to_bytes(8, "big") + value


class VersionedDict:
    """A dict of ``key -> (version, value)`` with last-writer-wins merge and data hooks.

    Its commands are :attr:`PUT` (payload: :func:`versioned_payload`; replies empty) and
    :attr:`GET` (replies the stored payload, or empty bytes for a missing key).

    Attributes:
        data: what this replica holds.
        partitions: the ring's partition count (to tell which keys a partition has).
    """

    PUT = Command("put", mutates=True)
    GET = Command("get", reads=True)

    def __init__(self, partitions: int) -> None:
        """Create an empty replica.

        Args:
            partitions: ``PeerRingConfig.partitions`` of the nodes it runs on.
        """
        self.partitions = partitions
        self.data: dict[bytes, tuple[int, bytes]] = {}

    def register(self, node: PeerRing, namespace: str = "app", *, hooks: bool = True) -> None:
        """Register the commands (and, with ``hooks``, the data hooks) on ``node``.

        Args:
            node: a node that is not started yet.
            namespace: the application's namespace.
            hooks: ``False`` registers the commands only: the node then has nothing to pull.
        """
        node.register(namespace, self.PUT, self.put)
        node.register(namespace, self.GET, self.get)
        if hooks:
            node.register_hooks(namespace, self)

    # commands ---------------------------------------------------------------------------

    def put(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        """Handler of :attr:`PUT`."""
        self.merge(key, int.from_bytes(payload[:8], "big"), payload[8:])
        return b""

    def get(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        """Handler of :attr:`GET`."""
        found = self.data.get(key)
        if found is None:
            return b""
        return versioned_payload(*found)

    def merge(self, key: bytes, version: int, value: bytes) -> None:
        """Store ``value`` unless the replica holds a version at least as high."""
        current = self.data.get(key)
        if current is None or current[0] < version:
            self.data[key] = (version, value)

    # DataHooks --------------------------------------------------------------------------

    def export_partition(
        self, partition: int, buckets: Collection[int] | None = None
    ) -> Iterable[bytes]:
        """The records of ``partition`` (only those of ``buckets`` when given)."""
        for key, (version, value) in list(self.data.items()):
            if partition_for_key(key, self.partitions) != partition:
                continue
            if buckets is not None and bucket_for_key(key) not in buckets:
                continue
            yield _REC.pack(version, len(key)) + key + value

    def apply_records(self, partition: int, records: Sequence[bytes]) -> None:
        """Merge records of :meth:`export_partition`."""
        for record in records:
            version, size = _REC.unpack_from(record)
            key = record[_REC.size : _REC.size + size]
            self.merge(key, version, record[_REC.size + size :])

    def drop_partition(self, partition: int) -> None:
        """Forget every key of ``partition``."""
        for key in [k for k in self.data if partition_for_key(k, self.partitions) == partition]:
            del self.data[key]

    def digest_partition(self, partition: int) -> Sequence[bytes]:
        """Per bucket, the sum of the fingerprints of its keys and versions (empty: none)."""
        sums = [0] * DIGEST_BUCKETS
        for key, (version, _) in self.data.items():
            if partition_for_key(key, self.partitions) == partition:
                b = bucket_for_key(key)
                sums[b] = (sums[b] + fingerprint64(key + version.to_bytes(8, "big"))) % 2**64
        return [s.to_bytes(8, "big") if s else b"" for s in sums]
