"""The stored-record layout of :class:`~peer_ring.kv.KVEngine`: header formats, flags, helpers.

Each record is one ``bytes`` object, a header followed by the value (see the
:mod:`peer_ring.kv._engine` docstring for why). Both header formats start with one
little-endian u64 ``word = flags | physical << 8``::

    compact (11 bytes): word, node u16, logical u8
    wide    (24 bytes): word, logical u32, node u32, expires f64

The module-level aliases (``_fp64``, ``_unpack_wide``...) are bound once here and imported
by the engine modules: a global lookup each, no wrapper call on the per-operation paths.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Callable

import farmhash

from peer_ring.core import DIGEST_BUCKETS
from peer_ring.kv._wire import GET_RESPONSE_HEAD, KEY_LENGTH, RECORD_HEAD

#: Bytes added to ``len(key) + len(stored record)`` per record by the size accounting:
#: two object headers, the dict entry and the LRU entry (measured with ``max_bytes`` set:
#: about 200 bytes per record; 110 without the LRU order, which only ``max_bytes`` needs).
RECORD_OVERHEAD = 200

_COMPACT = struct.Struct("<QHB")  # flags | physical << 8, node index, logical
_WIDE = struct.Struct("<QIId")  # flags | physical << 8, logical, node index, expires
_COMPACT_SIZE = _COMPACT.size
_WIDE_SIZE = _WIDE.size
_EXPIRES = struct.Struct("<d")
_EXPIRES_AT = 16  # in the wide header, which every record with a TTL has
_DIGEST_INPUT = struct.Struct("<QQIQB")  # key fp, physical, logical, node fp, is-delete
_DIGEST_OUTPUT = struct.Struct("<QI")  # sum of record hashes mod 2**64, record count
_MASK64 = 0xFFFF_FFFF_FFFF_FFFF

_TOMB = 0x01
_ENCODED = 0x02
_TTL = 0x04
_WIDE_FLAG = 0x08
_DEAD = _TOMB | _TTL  # flags & _DEAD == _TOMB: a delete's tombstone (see _is_delete)

# Deferred digests (see the engine's docstring): a partition of at most _DEFER_MAX records
# may stop updating its digest on every write once it has taken more writes since its last
# digests() than it holds records plus _BUDGET_MIN, and is then recounted by digests();
# recounting it costs about what that many incremental updates did (ski rental: at most
# twice the cheaper of the two). _DEFER_MAX bounds the recount, which runs in a sync round
# (32 partitions per loop turn) or on the write that takes the partition past the bound.
_DEFER_MAX = 32
_BUDGET_MIN = 4
_NEVER = 1 << 62  # the budget of a partition too large to defer: never exhausted

# The spec's Fingerprint64 (peer_ring.core.fingerprint64), called directly: the wrapper's
# extra call costs ~100 ns on every read.
_fp64: Callable[[bytes | str], int] = farmhash.fingerprint64
_unpack_compact = _COMPACT.unpack_from
_unpack_wide = _WIDE.unpack_from
_new = tuple.__new__
_GET_HEAD_PACK = GET_RESPONSE_HEAD.pack
_RECORD_HEAD_PACK = RECORD_HEAD.pack
_KEY_LEN_PACK = KEY_LENGTH.pack


def _header(blob: bytes) -> tuple[int, int, int, int, float, int]:
    """``(flags, physical, logical, node, expires, value offset)`` of a stored record."""
    if blob[0] & _WIDE_FLAG:
        word, logical, node, expires = _unpack_wide(blob)
        return word & 0xFF, word >> 8, logical, node, expires, _WIDE_SIZE
    word, node, logical = _unpack_compact(blob)
    return word & 0xFF, word >> 8, logical, node, 0.0, _COMPACT_SIZE


def _is_delete(flags: int) -> int:
    """1 for a delete's tombstone, else 0: the only flag a record's digest hash covers.

    An expired value (flagged TTL, whether or not it was already turned into a tombstone)
    hashes like the write it was, so noticing an expiry does not change the digest.
    """
    return 1 if flags & _DEAD == _TOMB else 0


def _empty_digest() -> array[int]:
    return array("Q", bytes(16 * DIGEST_BUCKETS))
