"""Partition-wide operations of :class:`~peer_ring.kv.KVEngine`: export, drop, digests.

What partition transfers, hinted handoff and anti-entropy use (through the KV data hooks):
a snapshot of one partition as records or as wire entries encoded straight from the stored
bytes, forgetting a partition, and its per-bucket digests. The engine class inherits these
methods, so calling them costs what it did when they were defined on the engine itself.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator

from peer_ring.core import DIGEST_BUCKETS
from peer_ring.kv._engine_expiry import _EngineExpiry
from peer_ring.kv._engine_layout import (
    _DIGEST_OUTPUT,
    _ENCODED,
    _KEY_LEN_PACK,
    _RECORD_HEAD_PACK,
    _TOMB,
    _TTL,
    RECORD_OVERHEAD,
    _empty_digest,
    _fp64,
    _header,
    _new,
)
from peer_ring.kv._record import Record
from peer_ring.kv._versions import Version
from peer_ring.kv._wire import FLAG_TOMBSTONE, encode_entry


class _EnginePartitions(_EngineExpiry):
    """The partition-wide half of :class:`~peer_ring.kv.KVEngine` (export, drop, digests)."""

    # ------------------------------------------------------------------ partitions

    def export(
        self, partition: int, buckets: Collection[int] | None = None
    ) -> Iterator[tuple[bytes, Record]]:
        """The records of ``partition`` (only those in digest ``buckets`` when given).

        Tombstones are included, so deletes travel; expired values are exported as the
        tombstones they are; records past their collection time are left out. The
        partition is snapshotted when this is called: writes made while the caller
        iterates are not included (they reach other replicas by replication).
        """
        items = list(self._parts[partition].items())
        wanted = None if buckets is None else frozenset(buckets)
        return self._export(items, wanted, self._clock.time())

    def _export(
        self, items: list[tuple[bytes, bytes]], wanted: frozenset[int] | None, now: float
    ) -> Iterator[tuple[bytes, Record]]:
        nodes = self._nodes
        grace = self._grace
        for key, blob in items:
            if wanted is not None and (_fp64(key) >> 32) % DIGEST_BUCKETS not in wanted:
                continue
            flags, physical, logical, node, expires, offset = _header(blob)
            version = _new(Version, (physical, logical, nodes[node]))
            if flags & _TOMB or (expires and expires <= now):
                if (expires or physical / 1_000_000) + grace <= now:
                    continue
                yield key, _new(Record, (b"", version, expires, True, False))
            else:
                value = blob[offset:]
                yield key, _new(Record, (value, version, expires, False, (flags & _ENCODED) != 0))

    def export_entries(
        self, partition: int, buckets: Collection[int] | None = None
    ) -> Iterator[bytes]:
        """:meth:`export` as wire entries, ``encode_entry(key, record)`` byte for byte,
        encoded straight from the stored bytes (no :class:`Record` per record): what a
        partition transfer sends. Snapshotted when called, as :meth:`export`.

        Raises:
            ValueError: (while iterating) a writer id cannot be encoded, as
                ``encode_entry``.
        """
        items = list(self._parts[partition].items())
        wanted = None if buckets is None else frozenset(buckets)
        return self._export_entries(items, wanted, self._clock.time())

    def _export_entries(
        self, items: list[tuple[bytes, bytes]], wanted: frozenset[int] | None, now: float
    ) -> Iterator[bytes]:
        node_wire = self._node_wire
        grace = self._grace
        key_head = _KEY_LEN_PACK
        record_head = _RECORD_HEAD_PACK
        for key, blob in items:
            if wanted is not None and (_fp64(key) >> 32) % DIGEST_BUCKETS not in wanted:
                continue
            flags, physical, logical, node, expires, offset = _header(blob)
            node_b = node_wire[node]
            if node_b is None:  # the slow path raises encode_entry's error
                yield from (encode_entry(k, r) for k, r in self._export([(key, blob)], None, now))
                continue
            if flags & _TOMB or (expires and expires <= now):
                if (expires or physical / 1_000_000) + grace <= now:
                    continue
                head = record_head(FLAG_TOMBSTONE, physical, logical, expires, len(node_b), 0)
                yield b"".join((key_head(len(key)), key, head, node_b))
            else:
                size = len(blob) - offset
                head = record_head(flags & _ENCODED, physical, logical, expires, len(node_b), size)
                yield b"".join((key_head(len(key)), key, head, node_b, blob[offset:]))

    def drop(self, partition: int) -> int:
        """Forget every record of ``partition``; returns how many there were."""
        part = self._parts[partition]
        lru = self._lru
        size = 0
        tombstones = 0
        with_ttl = 0
        for key, blob in part.items():
            size += len(key) + len(blob) + RECORD_OVERHEAD
            if blob[0] & _TOMB:
                tombstones += 1
            else:
                if blob[0] & _TTL:
                    with_ttl += 1  # its TTL index entry goes stale
                if lru is not None:
                    lru.pop(key, None)
        count = len(part)
        self._parts[partition] = {}
        self._digest[partition] = _empty_digest()
        self._ttl_floor[partition] = math.inf
        self._size -= size
        self._stored -= count
        self._tombstones -= tombstones
        self._ttl_count -= with_ttl
        return count

    def digests(self, partition: int) -> list[bytes]:
        """``DIGEST_BUCKETS`` digests of ``partition``: ``b""`` for an empty bucket.

        Each is 12 bytes: the sum (mod 2**64) of the bucket's record hashes and the record
        count. Records past their collection time are collected first -- tombstones, and
        expired values that active expiry has not found yet -- so that replicas compare
        what they keep, whether or not they noticed an expiry.
        """
        now = self._clock.time()
        self.collect_tombstones(now)
        if self._ttl_floor[partition] + self._grace <= now:
            self._sweep(partition, now)
        pack = _DIGEST_OUTPUT.pack
        digest = self._digest[partition]
        return [
            pack(digest[bucket], count) if (count := digest[DIGEST_BUCKETS + bucket]) else b""
            for bucket in range(DIGEST_BUCKETS)
        ]
