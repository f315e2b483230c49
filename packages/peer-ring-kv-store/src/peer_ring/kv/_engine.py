"""The local storage engine: one node's records, grouped by partition. No I/O, no asyncio.

Layout, chosen for memory (issue 6: 1,000,000 keys of 100 bytes in at most 2.5x their raw
size) and for a fast local read:

* one ``dict`` per partition, ``key -> blob``, so exporting, dropping or digesting a
  partition touches only its own keys;
* each record is a *single* ``bytes`` object: a header followed by the value. A tuple
  or slotted object per record, plus a ``Version`` tuple and its ints, would cost about
  150 bytes more per key. Two header formats, both starting with one little-endian u64
  ``word = flags | physical << 8`` (``physical`` < 2**56 microseconds, year 4253)::

      compact (11 bytes): word, node u16, logical u8
      wide    (24 bytes): word, logical u32, node u32, expires f64

  flags: 1 tombstone, 2 encoded value, 4 has a TTL, 8 wide header. The compact form
  serves the common record (no TTL, logical < 256, fewer than 65,536 writer ids); it
  exists because CPython allocates small objects in 16-byte steps and an 11-byte header
  keeps a 100-byte value in the 144-byte class instead of the 160-byte one (issue 6's
  measure). Node ids are interned (a cluster has few writers), so a record stores an
  index, not the ``host:port`` string. :class:`Record` objects are built only when a
  caller asks for one.

Measured on CPython 3.11 with 1,000,000 keys of 11 bytes and values of 100 bytes: about
124 bytes per key on top of the raw key and value (2.12x the raw bytes for the engine,
2.48x for the whole process with ``peer_ring.core`` imported); 215 bytes with
``max_bytes`` (the LRU order); 148 bytes when every key has a TTL.

Merging is last-writer-wins on :class:`Version` (``put`` applies a record only if its
version is higher than the stored one), so replicas that receive the same records in any
order, any number of times, end up identical (Dynamo section 4.4; ``apply_records`` of the
data hooks relies on it).

Expiry and tombstones:

* A value whose TTL has passed is absent for readers. When the engine notices (on read,
  by active expiry, on export) it drops the value but keeps the record's version as a
  tombstone until ``expires + tombstone_grace``. This matters for replication: a replica
  that missed the expiring write must not resurrect the older value it still holds when
  anti-entropy or handoff runs -- the kept version beats it.
* Deletes are tombstones kept until ``version time + tombstone_grace``. Collection times
  come from the record itself, so every replica forgets a tombstone at about the same
  time. A replica cut off for longer than the grace period may resurrect a deleted key
  (as in Cassandra's ``gc_grace_seconds``): keep the grace above your longest outage.

Digests (anti-entropy): per partition and per digest bucket (``bucket_for_key``), the
engine maintains, incrementally on every change, the sum modulo 2**64 of a 64-bit hash of
``(key, version, is-delete)`` and the number of records. The sum is order-independent, so
two replicas holding the same records have the same digest whatever the order of writes.
Expiry does not change a record's hash (an expired value and the tombstone it turns into
hash alike), so replicas that noticed an expiry at different moments still agree.
Records past their collection time leave the digest: :meth:`KVEngine.digests` first
collects due tombstones, and sweeps the partition for expired values past their grace when
a per-partition lower bound on expiry times says there may be some.

Two things keep digests cheap. A small partition (at most ``_DEFER_MAX`` = 32 records)
that takes more writes between two :meth:`KVEngine.digests` calls than it holds records
(plus 4) stops the per-write update (two record hashes) until the next call, which
recounts it from its records: the same sums, for about the cost of the updates it skipped
(a partition of 5 records written 200 times between two anti-entropy rounds pays 9
updates and one 5-record recount instead of 200 updates). Larger partitions are always
updated per write, so a recount never holds the event loop for long. And
:meth:`KVEngine.digests` keeps the list it built for a partition until the partition's
digest changes, so a round over unchanged partitions packs nothing.

Memory bound (``max_bytes``): every record is accounted as ``len(key)`` + the stored
record's length (header and value) + :data:`RECORD_OVERHEAD` (approximate: Python object
headers, the dict and LRU entries), visible as :attr:`KVEngine.size_bytes`. When a write
takes the total over ``max_bytes``, live records are evicted in least-recently-used order
(reads and writes count as use). Tombstones are not in the LRU order and are evicted only
when no live record is left to evict, oldest collection time first: forgetting a tombstone
early can let a deleted key come back from another replica, so it is the last resort.
Evictions are local (a cache-like bound, not a delete): other replicas keep their copy.

The engine is not thread-safe; it is meant for one asyncio event loop.

Modules: this one holds the engine's state, reads and writes (the per-operation paths); the
record layout is in :mod:`peer_ring.kv._engine_layout`, expiry, tombstone collection and
eviction in :mod:`peer_ring.kv._engine_expiry`, and the partition-wide operations (export,
drop, digests) in :mod:`peer_ring.kv._engine_partitions`, which :class:`KVEngine` inherits.
"""

from __future__ import annotations

import math
import random
import struct
from array import array
from collections import OrderedDict
from collections.abc import Iterable

from peer_ring.core import DIGEST_BUCKETS, Clock, InvalidArgumentError
from peer_ring.kv import _engine_layout
from peer_ring.kv._engine_layout import (
    _BUDGET_MIN,
    _COMPACT_SIZE,
    _DEAD,
    _DEFER_MAX,
    _ENCODED,
    _EXPIRES_AT,
    _MASK64,
    _TOMB,
    _TTL,
    _WIDE_FLAG,
    _WIDE_SIZE,
    RECORD_OVERHEAD,
    _empty_digest,
    _fp64,
    _header,
    _new,
    _unpack_compact,
    _unpack_wide,
)
from peer_ring.kv._engine_wire import _EngineWire
from peer_ring.kv._expiry import TTLIndex
from peer_ring.kv._record import Record, Resolver, reconcile
from peer_ring.kv._versions import MAX_NODE_ID_BYTES, Version

# Bound by assignment, not imported by name: CPython 3.11 compiles ``name.pack(...)`` as a
# method call (LOAD_METHOD, no bound method object) only when ``name`` is not bound by an
# import statement, and these calls run on every write (measured: +8% per put otherwise).
_COMPACT = _engine_layout._COMPACT
_DIGEST_INPUT = _engine_layout._DIGEST_INPUT
_EXPIRES = _engine_layout._EXPIRES
_WIDE = _engine_layout._WIDE

# RECORD_OVERHEAD is defined with the record layout; tests and callers import it from here.
__all__ = ["RECORD_OVERHEAD", "KVEngine"]


class KVEngine(_EngineWire):
    """One node's key-value records: LWW merge, TTL, tombstones, LRU bound, digests.

    Keys are ``bytes`` (encode ``str`` keys as UTF-8 first); values are ``bytes``.

    Args:
        partitions: the ring's partition count P; a key lives in
            ``partition_for_key(key, P)``. Must match the cluster's.
        clock: wall time for TTLs and tombstone collection (``clock.time()``).
        max_bytes: bound on :attr:`size_bytes`; ``None`` for no bound (and no LRU cost).
        tombstone_grace: seconds a tombstone (or an expired value's version) is kept after
            the delete (or the expiry) before it is collected.
        resolver: reconciles several replicas' records for :meth:`reconcile`; default:
            the highest version.
        rng: randomness for active-expiry sampling (seed it for reproducible tests).

    Raises:
        InvalidArgumentError: ``partitions < 1``, ``max_bytes < 1`` or a negative grace.
    """

    def __init__(
        self,
        partitions: int,
        clock: Clock,
        *,
        max_bytes: int | None = None,
        tombstone_grace: float = 3600.0,
        resolver: Resolver | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if partitions < 1:
            raise InvalidArgumentError(f"partitions must be >= 1, got {partitions}")
        if max_bytes is not None and max_bytes < 1:
            raise InvalidArgumentError(f"max_bytes must be >= 1 or None, got {max_bytes}")
        if not tombstone_grace >= 0:
            raise InvalidArgumentError(f"tombstone_grace must be >= 0, got {tombstone_grace}")
        self._partitions = partitions
        self._clock = clock
        self._max_bytes = max_bytes
        self._grace = float(tombstone_grace)
        #: The resolver used by :meth:`reconcile` (``None``: highest version wins).
        self.resolver = resolver
        self._rng = rng if rng is not None else random.Random()
        self._parts: list[dict[bytes, bytes]] = [{} for _ in range(partitions)]
        # Per partition: DIGEST_BUCKETS sums of record hashes, then as many record counts.
        # Arrays hold them unboxed (a list of 64-bit ints would cost ~7 MB at P=2048).
        self._digest: list[array[int]] = [_empty_digest() for _ in range(partitions)]
        # Per partition: writes left that update the digest incrementally; below 0 the
        # digest is stale (deferred) and digests() recounts it (_engine_layout._DEFER_MAX).
        self._digest_budget: list[int] = [_BUDGET_MIN] * partitions
        # Per partition: the list digests() built, kept until the digest changes.
        self._digest_lists: list[list[bytes] | None] = [None] * partitions
        # Interned writer ids: index <-> id, and the id's fingerprint for digests.
        self._nodes: list[str] = []
        self._node_index: dict[str, int] = {}
        self._node_fps: list[int] = []
        # Each id UTF-8 encoded for get_wire (None: an id the wire format cannot carry).
        self._node_wire: list[bytes | None] = []
        # The same ids as the wire carries them (UTF-8) -> index, for put_wire.
        self._wire_index: dict[bytes, int] = {}
        self._lru: OrderedDict[bytes, None] | None = None if max_bytes is None else OrderedDict()
        self._ttl = TTLIndex()
        self._ttl_count = 0  # live records with a TTL (the index also holds stale entries)
        # Per partition, a lower bound on the expiry of its live TTL records: digests()
        # sweeps a partition only when that bound says a record may be past its grace.
        self._ttl_floor: list[float] = [math.inf] * partitions
        # (collection time, key) of tombstones; entries go stale when the key is
        # rewritten or dropped and are checked when popped.
        self._graves: list[tuple[float, bytes]] = []
        self._stored = 0
        self._tombstones = 0
        self._size = 0
        self._evictions = 0
        self._expired = 0
        self._collected = 0

    # ------------------------------------------------------------------ observability

    @property
    def partitions(self) -> int:
        """The partition count P."""
        return self._partitions

    @property
    def max_bytes(self) -> int | None:
        """The memory bound, or ``None``."""
        return self._max_bytes

    @property
    def tombstone_grace(self) -> float:
        """Seconds tombstones are kept."""
        return self._grace

    @property
    def size_bytes(self) -> int:
        """Approximate memory held by records (see :data:`RECORD_OVERHEAD`)."""
        return self._size

    @property
    def evictions(self) -> int:
        """Records evicted to respect ``max_bytes`` since creation."""
        return self._evictions

    @property
    def expired(self) -> int:
        """Values freed because their TTL passed (lazily or actively) since creation."""
        return self._expired

    @property
    def collected(self) -> int:
        """Tombstones forgotten after their grace period since creation."""
        return self._collected

    @property
    def tombstones(self) -> int:
        """Tombstones currently held (deletes and expired values awaiting collection)."""
        return self._tombstones

    @property
    def stored(self) -> int:
        """Records currently held, tombstones included."""
        return self._stored

    @property
    def ttl_keys(self) -> int:
        """Live records that carry a TTL."""
        return self._ttl_count

    def stats(self) -> dict[str, int]:
        """Every counter at once (for metrics): keys, tombstones, bytes, evictions..."""
        return {
            "keys": len(self),
            "tombstones": self._tombstones,
            "ttl_keys": self._ttl_count,
            "size_bytes": self._size,
            "max_bytes": self._max_bytes or 0,
            "evictions": self._evictions,
            "expired": self._expired,
            "collected": self._collected,
        }

    def __len__(self) -> int:
        """Live records (not deleted; values past their TTL count until noticed)."""
        return self._stored - self._tombstones

    def partition_of(self, key: bytes) -> int:
        """The partition of ``key`` (same as ``peer_ring.core.partition_for_key``)."""
        return _fp64(key) % self._partitions

    def partition_len(self, partition: int) -> int:
        """Records of ``partition`` held here, tombstones included."""
        return len(self._parts[partition])

    def keys(self, partition: int, prefix: bytes, after: bytes | None, limit: int) -> list[bytes]:
        """Up to ``limit`` live keys of ``partition`` starting with ``prefix``, in byte
        order, greater than ``after`` (a page of a scan)."""
        part = self._parts[partition]
        candidates = sorted(
            k for k in part if k.startswith(prefix) and (after is None or k > after)
        )
        out: list[bytes] = []
        for key in candidates:
            if len(out) >= limit:
                break
            if self.get(key) is not None:
                out.append(key)
        return out

    # ------------------------------------------------------------------ reads

    def get(self, key: bytes) -> Record | None:
        """The live record of ``key``, or ``None`` if absent, deleted or expired.

        An expired value found here is freed at once (lazy expiry). Counts as a use for
        the LRU order.
        """
        fp = _fp64(key)
        partition = fp % self._partitions
        blob = self._parts[partition].get(key)
        if blob is None:
            return None
        flags = blob[0]
        if flags & _TOMB:
            return None
        if flags & _WIDE_FLAG:
            word, logical, node, expires = _unpack_wide(blob)
            if expires and expires <= self._clock.time():
                self._expire(partition, fp, key, blob)
                return None
            value = blob[_WIDE_SIZE:]
        else:
            word, node, logical = _unpack_compact(blob)
            expires = 0.0
            value = blob[_COMPACT_SIZE:]
        lru = self._lru
        if lru is not None:
            lru.move_to_end(key)
        # tuple.__new__ skips NamedTuple's Python-level __new__: a third of the read cost.
        version = _new(Version, (word >> 8, logical, self._nodes[node]))
        return _new(Record, (value, version, expires, False, (flags & _ENCODED) != 0))

    def get_record(self, key: bytes) -> Record | None:
        """The stored record of ``key`` including tombstones, or ``None`` if none.

        This is what a replica answers to a coordinator's read: a tombstone must take part
        in reconciliation so a delete beats an older value elsewhere. An expired value is
        returned as the tombstone it becomes.
        """
        fp = _fp64(key)
        partition = fp % self._partitions
        blob = self._parts[partition].get(key)
        if blob is None:
            return None
        flags, physical, logical, node, expires, offset = _header(blob)
        version = _new(Version, (physical, logical, self._nodes[node]))
        if not flags & _TOMB:
            if not (expires and expires <= self._clock.time()):
                if self._lru is not None:
                    self._lru.move_to_end(key)
                value = blob[offset:]
                return _new(Record, (value, version, expires, False, (flags & _ENCODED) != 0))
            self._expire(partition, fp, key, blob)
        return _new(Record, (b"", version, expires, True, False))

    def get_value(self, key: bytes, partition: int) -> tuple[bytes, bool] | None:
        """``(value, encoded)`` of the live record of ``key``, or ``None``: :meth:`get`
        for a caller that already knows the key's ``partition`` and needs no version.

        It builds no :class:`Record`: the store's local read (``quorum=1``) uses it.
        """
        blob = self._parts[partition].get(key)
        if blob is None:
            return None
        flags = blob[0]
        if flags & _TOMB:
            return None
        if flags & _WIDE_FLAG:
            expires = _EXPIRES.unpack_from(blob, _EXPIRES_AT)[0]
            if expires and expires <= self._clock.time():
                self._expire(partition, _fp64(key), key, blob)
                return None
            value = blob[_WIDE_SIZE:]
        else:
            value = blob[_COMPACT_SIZE:]
        lru = self._lru
        if lru is not None:
            lru.move_to_end(key)
        return value, (flags & _ENCODED) != 0

    def reconcile(self, key: bytes, records: Iterable[Record | None]) -> Record | None:
        """Pick the winner among replicas' records with this engine's resolver.

        See :func:`peer_ring.kv._record.reconcile`.
        """
        return reconcile(key, records, self.resolver)

    # ------------------------------------------------------------------ writes

    def put(self, key: bytes, record: Record) -> bool:
        """Store ``record`` if its version is higher than the stored one (LWW merge).

        A tombstone is a delete. A record that arrives already expired is kept as a
        tombstone (its version still has to beat older values); one already past its
        collection time only removes an older stored record.

        Returns:
            Whether anything changed.

        Raises:
            TypeError: ``key`` is not ``bytes``.
            ValueError: the version or expiry is out of range.
            InvalidArgumentError: the record alone is larger than ``max_bytes``.
        """
        if type(key) is not bytes:
            raise TypeError(f"keys are bytes, got {type(key).__name__}")
        value, version, expires, tombstone, encoded = record
        physical, logical, node_id = version
        node = self._node_index.get(node_id)
        if node is None:
            node = self._intern(node_id)
        flags = (_TOMB if tombstone else 0) | (_ENCODED if encoded else 0)
        return self._put(key, value, physical, logical, node, expires, flags)

    def _put(
        self,
        key: bytes,
        value: bytes,
        physical: int,
        logical: int,
        node: int,
        expires: float,
        wire_flags: int,
    ) -> bool:
        """:meth:`put` of a record given as its fields: ``node`` is the writer's interned
        index, ``wire_flags`` the record's flags (``_TOMB``, ``_ENCODED``, as on the wire)."""
        fp = _fp64(key)
        partition = fp % self._partitions
        part = self._parts[partition]
        old = part.get(key)
        if old is not None:
            if old[0] & _WIDE_FLAG:
                old_word, old_logical, old_node, _ = _unpack_wide(old)
            else:
                old_word, old_node, old_logical = _unpack_compact(old)
            old_physical = old_word >> 8
            # LWW: keep the stored record unless the new version is higher. The physical
            # parts almost always differ, so compare them alone first (no tuple built).
            if old_physical >= physical and (
                old_physical > physical
                or (old_logical, self._nodes[old_node]) >= (logical, self._nodes[node])
            ):
                return False
        tombstone = wire_flags & _TOMB
        deadline = 0.0
        if tombstone or expires:
            if not (expires >= 0.0 and math.isfinite(expires)):
                raise ValueError(f"expires must be a finite time >= 0, got {expires!r}")
            now = self._clock.time()
            if not tombstone and expires <= now:
                tombstone = _TOMB
            if tombstone:
                deadline = (expires or physical / 1_000_000) + self._grace
                if deadline <= now:
                    # Too old to keep: it can only erase an older stored record.
                    if old is None:
                        return False
                    self._remove(partition, fp, key, old)
                    return True
        if tombstone:
            flags = _TOMB | (_TTL if expires else 0)
            value = b""
        else:
            flags = (wire_flags & _ENCODED) | (_TTL if expires else 0)
        try:
            if expires or logical > 0xFF or node > 0xFFFF:
                flags |= _WIDE_FLAG
                blob = _WIDE.pack(flags | physical << 8, logical, node, expires) + value
            else:
                blob = _COMPACT.pack(flags | physical << 8, node, logical) + value
        except struct.error as exc:
            version = Version(physical, logical, self._nodes[node])
            raise ValueError(f"version out of range: {version!r} ({exc})") from None
        limit = self._max_bytes
        if limit is not None and len(key) + len(blob) + RECORD_OVERHEAD > limit:
            raise InvalidArgumentError(
                f"record of {len(key) + len(blob) + RECORD_OVERHEAD} bytes (accounted) "
                f"cannot fit in max_bytes={limit}"
            )
        # The accounting of the replaced record and of the new one in a single pass: one
        # digest update (new hash - old hash), one size update (see _unaccount for the
        # removal alone; drop and from-scratch recomputation in the tests must agree).
        # A small partition written more often than it is digested defers the digest
        # update to digests() (_digest_budget; see the module docstring).
        budget = self._digest_budget
        left = budget[partition] - 1
        budget[partition] = left
        if left >= 0:
            node_fps = self._node_fps
            record_hash = _fp64(
                _DIGEST_INPUT.pack(
                    fp, physical, logical, node_fps[node], 1 if flags & _DEAD == _TOMB else 0
                )
            )
            digest = self._digest[partition]
            bucket = (fp >> 32) % DIGEST_BUCKETS
            if old is None:
                digest[DIGEST_BUCKETS + bucket] += 1
            else:
                record_hash -= _fp64(
                    _DIGEST_INPUT.pack(
                        fp,
                        old_physical,
                        old_logical,
                        node_fps[old_node],
                        1 if old[0] & _DEAD == _TOMB else 0,
                    )
                )
            digest[bucket] = (digest[bucket] + record_hash) & _MASK64
            self._digest_lists[partition] = None
        was_live = False
        if old is None:
            self._size += len(key) + len(blob) + RECORD_OVERHEAD
            self._stored += 1
        else:
            old_flags = old[0]
            self._size += len(blob) - len(old)
            if old_flags & _TOMB:
                self._tombstones -= 1  # its grave entry goes stale
            else:
                was_live = True
                if old_flags & _TTL:
                    self._ttl_count -= 1  # its TTL index entry goes stale
        part[key] = blob
        if left < 0 and old is None and len(part) > _DEFER_MAX:
            self._recount(partition)  # grown past the bound: per-write updates again
        lru = self._lru
        if flags & _TOMB:
            if was_live and lru is not None:
                lru.pop(key, None)
            self._tombstones += 1
            self._bury(key, deadline)
        else:
            if lru is not None:
                if was_live:
                    lru.move_to_end(key)  # every live record is in the LRU order
                else:
                    lru[key] = None
            if flags & _TTL:
                self._add_ttl(key)
                if expires < self._ttl_floor[partition]:
                    self._ttl_floor[partition] = expires
        if limit is not None and self._size > limit:
            self._evict(key)
        return True

    def delete(self, key: bytes, version: Version) -> bool:
        """Write a tombstone for ``key`` (``put(key, Record.deleted(version))``)."""
        return self.put(key, Record.deleted(version))

    # ------------------------------------------------------------------ internals

    def _intern(self, node_id: str) -> int:
        index = len(self._nodes)
        self._nodes.append(node_id)
        self._node_index[node_id] = index
        self._node_fps.append(_fp64(node_id))
        try:
            wire: bytes | None = node_id.encode()
        except UnicodeEncodeError:
            wire = None
        if wire is not None and len(wire) > MAX_NODE_ID_BYTES:
            wire = None
        self._node_wire.append(wire)
        if wire is not None:
            self._wire_index[wire] = index
        return index
