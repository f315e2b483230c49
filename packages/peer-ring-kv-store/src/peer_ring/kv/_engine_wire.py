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

from peer_ring.kv._engine_layout import (
    _COMPACT_SIZE,
    _ENCODED,
    _GET_HEAD_PACK,
    _TOMB,
    _WIDE_FLAG,
    _WIDE_SIZE,
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


class _EngineWire(_EnginePartitions):
    """The wire-format reads and writes of :class:`~peer_ring.kv.KVEngine`."""

    _wire_index: dict[bytes, int]

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
        if observe is not None:
            observe(physical, logical, self._nodes[node])
        return self._put(key, payload[node_end:], physical, logical, node, expires, flags)
