"""The replica's reads and writes in the wire format, straight from and to the stored bytes.

A replica answers a GET with an encoded record and stores a SET's encoded record. Both
paths of :class:`~peer_ring.kv.KVEngine` here skip the :class:`Record` and
:class:`Version` objects in between (``encode_get_response(get_record(key))`` and
``put(key, decode_record(payload))`` build two each): :meth:`_EngineWire.get_wire` encodes
the answer from the stored header, :meth:`_EngineWire.put_wire` reads the fields from the
payload. Both give byte-for-byte / state-for-state what the object paths give (the tests
compare them); anything unusual (a malformed payload, a writer never seen, a writer id the
wire format cannot carry) goes through the object path, which raises its precise error.
The engine class inherits these methods, so calling them costs what it did when they were
defined on the engine itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from peer_ring.core import DIGEST_BUCKETS
from peer_ring.kv import _engine_layout
from peer_ring.kv._engine_layout import (
    _COMPACT_SIZE,
    _DEFER_MAX,
    _ENCODED,
    _GET_HEAD_PACK,
    _MASK64,
    _TOMB,
    _WIDE_FLAG,
    _WIDE_SIZE,
    RECORD_OVERHEAD,
    _fp64,
    _unpack_compact,
    _unpack_wide,
)
from peer_ring.kv._engine_partitions import _EnginePartitions
from peer_ring.kv._record import Record
from peer_ring.kv._wire import FLAG_ENCODED, FLAG_TOMBSTONE, RECORD_HEAD, encode_get_response

_unpack_record_head = RECORD_HEAD.unpack_from
_RECORD_HEAD_SIZE = RECORD_HEAD.size
# The stored flags share the wire's bits for these two (put_wire passes them through).
assert (_TOMB, _ENCODED) == (FLAG_TOMBSTONE, FLAG_ENCODED)
_WIRE_FLAGS = _TOMB | _ENCODED
_INF = math.inf
# Bound by assignment (a method call, not an attribute load and a call: see _engine.py).
_COMPACT = _engine_layout._COMPACT
_DIGEST_INPUT = _engine_layout._DIGEST_INPUT
# The largest physical time a compact header holds (word = flags | physical << 8, a u64).
_MAX_PHYSICAL = (1 << 56) - 1
# A stored record this path replaces itself: compact header, live, no TTL (flags 0/_ENCODED).
_SIMPLE_OLD = _WIDE_FLAG | _TOMB


class _EngineWire(_EnginePartitions):
    """The wire-format reads and writes of :class:`~peer_ring.kv.KVEngine`."""

    _wire_index: dict[bytes, int]
    _parts: list[dict[bytes, bytes]]
    _nodes: list[str]
    _node_wire: list[bytes | None]
    _partitions: int

    if TYPE_CHECKING:
        # Defined by KVEngine (_engine.py).

        def get_record(self, key: bytes) -> Record | None: ...
        def _put(
            self,
            key: bytes,
            value: bytes,
            physical: int,
            logical: int,
            node: int,
            expires: float,
            wire_flags: int,
        ) -> bool: ...

    def get_wire(self, key: bytes, partition: int) -> bytes:
        """``encode_get_response(get_record(key))``, straight from the stored bytes.

        A replica's answer to a GET: tombstones included, an expired value answered as
        the tombstone it becomes, a use for the LRU order. No :class:`Record` or
        :class:`Version` is built, and ``partition`` is the one the caller computed (the
        core's ``CommandContext.partition``): a wrong one reads as absent.

        Raises:
            ValueError: the record's writer id cannot be encoded (as ``encode_record``).
        """
        blob = self._parts[partition].get(key)
        if blob is None:
            return b"\x00"
        flags = blob[0]
        if flags & _WIDE_FLAG:
            word, logical, node, expires = _unpack_wide(blob)
            offset = _WIDE_SIZE
        else:
            word, node, logical = _unpack_compact(blob)
            expires = 0.0
            offset = _COMPACT_SIZE
        node_b: bytes | None = self._node_wire[node]
        if node_b is None:  # longer than the wire format allows: encode_record raises
            return encode_get_response(self.get_record(key))
        if not flags & _TOMB:
            if not expires or expires > self._clock.time():
                lru = self._lru
                if lru is not None:
                    lru.move_to_end(key)
                size = len(blob) - offset
                head = _GET_HEAD_PACK(
                    1, flags & _ENCODED, word >> 8, logical, expires, len(node_b), size
                )
                return b"".join((head, node_b, blob[offset:]))
            self._expire(partition, _fp64(key), key, blob)
        head = _GET_HEAD_PACK(1, FLAG_TOMBSTONE, word >> 8, logical, expires, len(node_b), 0)
        return head + node_b

    def put_wire(
        self, key: bytes, payload: bytes, observe: Callable[[int, int, str], object] | None
    ) -> bool | None:
        """:meth:`put` of the record a SET payload encodes, without building it.

        A replica's write (``_wire.decode_record`` then :meth:`put`, in one step): the
        fields are read from ``payload`` and stored; ``observe(physical, logical,
        writer)`` (the HLC's, for a peer's write) sees the version first.

        Returns:
            Whether anything changed, or ``None`` when ``payload`` is not a well-formed
            record of a writer this engine knows: then nothing was done, and the caller
            decodes it (``decode_record`` raises the precise error) and calls :meth:`put`.
        """
        size = len(payload)
        if size < _RECORD_HEAD_SIZE:
            return None
        flags, physical, logical, expires, node_len, value_len = _unpack_record_head(payload)
        node_end = _RECORD_HEAD_SIZE + node_len
        # The checks of _wire.decode_record, in one test (see _wire._read_record).
        if (
            node_end + value_len != size
            or flags & ~_WIRE_FLAGS
            or not 0.0 <= expires < _INF  # also true for NaN
            or (flags & _TOMB and (value_len or flags & _ENCODED))
        ):
            return None
        node = self._wire_index.get(payload[_RECORD_HEAD_SIZE:node_end])
        if node is None:
            return None
        nodes = self._nodes
        if observe is not None:
            observe(physical, logical, nodes[node])
        if (
            flags & _TOMB
            or expires
            or logical > 0xFF
            or node > 0xFFFF
            or physical > _MAX_PHYSICAL
            or self._max_bytes is not None
        ):
            return self._put(key, payload[node_end:], physical, logical, node, expires, flags)
        # The common write, _put's steps for it inline (one Python call fewer per replica
        # write; tests/test_replica_wire_paths.py compares every state with put()): a live
        # value without TTL over nothing or a record of the same kind, compact header, no
        # memory bound (so no LRU order either).
        fp = _fp64(key)
        partition = fp % self._partitions
        part = self._parts[partition]
        old = part.get(key)
        if old is not None:
            if old[0] & _SIMPLE_OLD:  # a tombstone or a TTL record: _put's general steps
                return self._put(key, payload[node_end:], physical, logical, node, 0.0, flags)
            old_word, old_node, old_logical = _unpack_compact(old)
            old_physical = old_word >> 8
            if old_physical >= physical and (
                old_physical > physical or (old_logical, nodes[old_node]) >= (logical, nodes[node])
            ):
                return False  # LWW: the stored version is not lower
        blob = _COMPACT.pack(flags | physical << 8, node, logical) + payload[node_end:]
        budget = self._digest_budget
        left = budget[partition] - 1
        budget[partition] = left
        if left >= 0:
            node_fps = self._node_fps
            record_hash = _fp64(_DIGEST_INPUT.pack(fp, physical, logical, node_fps[node], 0))
            digest = self._digest[partition]
            bucket = (fp >> 32) % DIGEST_BUCKETS
            if old is None:
                digest[DIGEST_BUCKETS + bucket] += 1
            else:
                record_hash -= _fp64(
                    _DIGEST_INPUT.pack(fp, old_physical, old_logical, node_fps[old_node], 0)
                )
            digest[bucket] = (digest[bucket] + record_hash) & _MASK64
            self._digest_lists[partition] = None
        part[key] = blob
        if old is None:  # (len(blob) is _COMPACT_SIZE + value_len)
            self._size += len(key) + _COMPACT_SIZE + value_len + RECORD_OVERHEAD
            self._stored += 1
            if left < 0 and len(part) > _DEFER_MAX:
                self._recount(partition)  # grown past the bound: per-write updates again
        else:
            self._size += _COMPACT_SIZE + value_len - len(old)
        return True
