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
from peer_ring.kv import _engine_layout
from peer_ring.kv._engine_expiry import _EngineExpiry
from peer_ring.kv._engine_layout import (
    _BUDGET_MIN,
    _DEAD,
    _DEFER_MAX,
    _DIGEST_OUTPUT,
    _ENCODED,
    _KEY_LEN_PACK,
    _MASK64,
    _NEVER,
    _RECORD_HEAD_PACK,
    _TOMB,
    _TTL,
    _WIDE_FLAG,
    RECORD_OVERHEAD,
    _empty_digest,
    _fp64,
    _header,
    _new,
    _unpack_compact,
    _unpack_wide,
)
from peer_ring.kv._record import Record
from peer_ring.kv._versions import Version
from peer_ring.kv._wire import FLAG_TOMBSTONE, encode_entry

# Bound by assignment (a method call, not an attribute load and a call: see _engine.py).
_DIGEST_INPUT = _engine_layout._DIGEST_INPUT


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
        self._digest_budget[partition] = _BUDGET_MIN
        self._digest_lists[partition] = None
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
        if self._digest_budget[partition] < 0:
            self._recount(partition)  # deferred: the writes since the last call skipped it
        else:
            self._renew_budget(partition)
        digests = self._digest_lists[partition]
        if digests is None:
            # Kept until the digest changes (every change sets it to None): an anti-entropy
            # round over unchanged partitions packs nothing. A copy goes out, so a caller
            # changing its list cannot change what later calls return.
            pack = _DIGEST_OUTPUT.pack
            digest = self._digest[partition]
            digests = [
                pack(digest[bucket], count) if (count := digest[DIGEST_BUCKETS + bucket]) else b""
                for bucket in range(DIGEST_BUCKETS)
            ]
            self._digest_lists[partition] = digests
        return digests.copy()

    def _renew_budget(self, partition: int) -> None:
        """Give ``partition`` as many incremental digest updates as it holds records
        (plus :data:`_BUDGET_MIN`) until the next :meth:`digests`, or never defer it when it
        holds more than :data:`_DEFER_MAX`."""
        size = len(self._parts[partition])
        self._digest_budget[partition] = size + _BUDGET_MIN if size <= _DEFER_MAX else _NEVER

    def _recount(self, partition: int) -> None:
        """Compute ``partition``'s digest from its records (what the per-write updates
        maintain: the same sums and counts), after writes that deferred it."""
        digest = _empty_digest()
        node_fps = self._node_fps
        pack = _DIGEST_INPUT.pack
        for key, blob in self._parts[partition].items():
            if blob[0] & _WIDE_FLAG:
                word, logical, node, _ = _unpack_wide(blob)
            else:
                word, node, logical = _unpack_compact(blob)
            fp = _fp64(key)
            bucket = (fp >> 32) % DIGEST_BUCKETS
            record_hash = _fp64(
                pack(fp, word >> 8, logical, node_fps[node], 1 if word & _DEAD == _TOMB else 0)
            )
            digest[bucket] = (digest[bucket] + record_hash) & _MASK64
            digest[DIGEST_BUCKETS + bucket] += 1
        self._digest[partition] = digest
        self._digest_lists[partition] = None
        self._renew_budget(partition)
