"""Expiry, tombstone collection and eviction of :class:`~peer_ring.kv.KVEngine`.

Everything that takes a record out of the engine, or turns a value into a tombstone: active
and lazy expiry, collection of tombstones past their grace, LRU eviction under
``max_bytes``, and the accounting of a removed record (size, counts, digest). The rules are
in the :mod:`peer_ring.kv._engine` docstring. The engine class inherits these methods
(:class:`_EngineExpiry` is its base), so calling them costs what it did when they were
defined on the engine itself.
"""

from __future__ import annotations

import heapq
import logging
import math
import random
from array import array
from collections import OrderedDict

from peer_ring.core import DIGEST_BUCKETS, Clock
from peer_ring.kv import _engine_layout
from peer_ring.kv._engine_layout import (
    _ENCODED,
    _EXPIRES_AT,
    _MASK64,
    _TOMB,
    _TTL,
    RECORD_OVERHEAD,
    _fp64,
    _header,
    _is_delete,
    _unpack_wide,
)
from peer_ring.kv._expiry import DEFAULT_SAMPLE, MAX_ROUNDS, REPEAT_THRESHOLD, TTLIndex

# Bound by assignment, not imported by name: CPython 3.11 compiles ``name.pack(...)`` as a
# method call (LOAD_METHOD, no bound method object) only when ``name`` is not bound by an
# import statement, and these calls run on every write (measured: +8% per put otherwise).
_DIGEST_INPUT = _engine_layout._DIGEST_INPUT
_EXPIRES = _engine_layout._EXPIRES
_WIDE = _engine_layout._WIDE

logger = logging.getLogger(__name__)


class _EngineExpiry:
    """The expiry, collection and eviction half of :class:`~peer_ring.kv.KVEngine`.

    Not used on its own: the engine's ``__init__`` sets every attribute declared here.
    """

    _partitions: int
    _clock: Clock
    _max_bytes: int | None
    _grace: float
    _rng: random.Random
    _parts: list[dict[bytes, bytes]]
    _digest: list[array[int]]
    _digest_budget: list[int]
    _digest_lists: list[list[bytes] | None]
    _nodes: list[str]
    _node_fps: list[int]
    _node_wire: list[bytes | None]
    _lru: OrderedDict[bytes, None] | None
    _ttl: TTLIndex
    _ttl_count: int
    _ttl_floor: list[float]
    _graves: list[tuple[float, bytes]]
    _stored: int
    _tombstones: int
    _size: int
    _evictions: int
    _expired: int
    _collected: int

    def expire_step(self, sample: int = DEFAULT_SAMPLE) -> int:
        """One step of active expiry, then collection of tombstones past their grace.

        Samples ``sample`` keys that carry a TTL and frees the expired ones; repeats while
        more than 25% of a sample was expired, at most :data:`MAX_ROUNDS` times, so the
        work per call is bounded (Redis' algorithm).

        Returns:
            How many expired values were freed.
        """
        now = self._clock.time()
        parts = self._parts
        partitions = self._partitions
        ttl = self._ttl
        freed = 0
        for _ in range(MAX_ROUNDS):
            entries = ttl.sample(self._rng, sample)
            if not entries:
                break
            done = []  # entries to remove: expired now, or stale already
            for position, key in entries:
                fp = _fp64(key)
                partition = fp % partitions
                blob = parts[partition].get(key)
                if blob is None or blob[0] & (_TOMB | _TTL) != _TTL:
                    done.append(position)  # stale: the key no longer has a live TTL
                    continue
                expires = _EXPIRES.unpack_from(blob, _EXPIRES_AT)[0]
                if expires <= now:
                    self._expire(partition, fp, key, blob)
                    freed += 1
                    done.append(position)
            ttl.remove(done)
            if len(done) <= len(entries) * REPEAT_THRESHOLD:
                break
        self.collect_tombstones(now)
        return freed

    def collect_tombstones(self, now: float | None = None) -> int:
        """Forget tombstones whose collection time (death + grace) has passed.

        Returns:
            How many were collected.
        """
        if now is None:
            now = self._clock.time()
        graves = self._graves
        collected = 0
        while graves and graves[0][0] <= now:
            deadline, key = heapq.heappop(graves)
            fp = _fp64(key)
            partition = fp % self._partitions
            blob = self._parts[partition].get(key)
            if blob is not None and self._is_grave(blob, deadline):
                self._remove(partition, fp, key, blob)
                collected += 1
        self._collected += collected
        return collected

    # ------------------------------------------------------------------ internals

    def _sweep(self, partition: int, now: float) -> None:
        """Expire every expired value of ``partition`` (removing those past their grace)."""
        floor = math.inf
        expired = []
        for key, blob in self._parts[partition].items():
            if blob[0] & (_TOMB | _TTL) == _TTL:
                expires = _EXPIRES.unpack_from(blob, _EXPIRES_AT)[0]
                if expires <= now:
                    expired.append((key, blob))
                elif expires < floor:
                    floor = expires
        for key, blob in expired:
            self._expire(partition, _fp64(key), key, blob)
        self._ttl_floor[partition] = floor

    def _unaccount(self, partition: int, fp: int, key: bytes, blob: bytes) -> None:
        """Take ``blob``, the record of ``key`` being removed, out of every count."""
        flags, physical, logical, node, _, _ = _header(blob)
        self._size -= len(key) + len(blob) + RECORD_OVERHEAD
        self._stored -= 1
        if self._digest_budget[partition] >= 0:  # else deferred: digests() recounts it
            bucket = (fp >> 32) % DIGEST_BUCKETS
            digest = self._digest[partition]
            record_hash = _fp64(
                _DIGEST_INPUT.pack(fp, physical, logical, self._node_fps[node], _is_delete(flags))
            )
            digest[bucket] = (digest[bucket] - record_hash) & _MASK64
            digest[DIGEST_BUCKETS + bucket] -= 1
            self._digest_lists[partition] = None
        if flags & _TOMB:
            self._tombstones -= 1  # its grave entry goes stale
        else:
            if flags & _TTL:
                self._ttl_count -= 1  # its TTL index entry goes stale
            if self._lru is not None:
                self._lru.pop(key, None)

    def _remove(self, partition: int, fp: int, key: bytes, blob: bytes) -> None:
        del self._parts[partition][key]
        self._unaccount(partition, fp, key, blob)

    def _expire(self, partition: int, fp: int, key: bytes, blob: bytes) -> None:
        """Turn a live, expired record (wide header) into a tombstone keeping its version."""
        word, logical, node, expires = _unpack_wide(blob)
        self._expired += 1
        deadline = expires + self._grace
        if deadline <= self._clock.time():
            self._remove(partition, fp, key, blob)
            return
        # The digest hash is unchanged (see _is_delete); only the value goes.
        flags = ((word & 0xFF) | _TOMB) & ~_ENCODED
        grave = _WIDE.pack((word & ~0xFF) | flags, logical, node, expires)
        self._parts[partition][key] = grave
        self._size -= len(blob) - len(grave)
        self._ttl_count -= 1  # its TTL index entry goes stale
        if self._lru is not None:
            self._lru.pop(key, None)
        self._tombstones += 1
        self._bury(key, deadline)

    def _add_ttl(self, key: bytes) -> None:
        self._ttl_count += 1
        ttl = self._ttl
        ttl.add(key)
        # Stale entries are removed when sampled; compact once they may outnumber the
        # live ones, so the index stays O(live TTL keys) at an amortized O(1) per entry.
        if len(ttl) > 2 * self._ttl_count + 1024:
            ttl.compact(self._has_live_ttl)

    def _has_live_ttl(self, key: bytes) -> bool:
        blob = self._lookup(key)
        return blob is not None and blob[0] & (_TOMB | _TTL) == _TTL

    def _bury(self, key: bytes, deadline: float) -> None:
        graves = self._graves
        heapq.heappush(graves, (deadline, key))
        # Entries of rewritten or dropped tombstones stay in the heap until popped;
        # compact once they outnumber the live ones, so the heap stays O(tombstones)
        # at an amortized O(1) cost per entry.
        if len(graves) > 2 * self._tombstones + 1024:
            self._graves = [
                (when, k) for when, k in graves if self._is_grave(self._lookup(k), when)
            ]
            heapq.heapify(self._graves)

    def _lookup(self, key: bytes) -> bytes | None:
        return self._parts[_fp64(key) % self._partitions].get(key)

    def _is_grave(self, blob: bytes | None, deadline: float) -> bool:
        """Whether ``blob`` is the tombstone that a grave entry ``deadline`` refers to."""
        if blob is None or not blob[0] & _TOMB:
            return False
        _, physical, _, _, expires, _ = _header(blob)
        return bool((expires or physical / 1_000_000) + self._grace == deadline)

    def _evict(self, protect: bytes) -> None:
        """Evict until ``size_bytes <= max_bytes``: LRU live records, then tombstones."""
        limit = self._max_bytes
        assert limit is not None and self._lru is not None
        lru = self._lru
        while self._size > limit and lru:
            key = next(iter(lru))
            if key == protect:  # the record just written is the only live one left
                break
            fp = _fp64(key)
            partition = fp % self._partitions
            self._remove(partition, fp, key, self._parts[partition][key])
            self._evictions += 1
        graves = self._graves
        while self._size > limit and graves:
            deadline, key = heapq.heappop(graves)
            fp = _fp64(key)
            partition = fp % self._partitions
            blob = self._parts[partition].get(key)
            if blob is not None and self._is_grave(blob, deadline):
                logger.debug("max_bytes reached with no live record left: evicting a tombstone")
                self._remove(partition, fp, key, blob)
                self._evictions += 1
