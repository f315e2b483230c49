"""Binary payloads of the KV replica commands (what goes in ``Request.payload``).

Everything is little-endian and length-prefixed; no JSON, no pickle. Decoders are strict:
any malformed payload raises :class:`MalformedPayloadError` with a message saying what is
wrong, never ``IndexError``/``struct.error``, and trailing bytes are an error too.

Record (26 bytes + node id + value; both lengths up front, so one ``struct`` call reads
the whole fixed part)::

    flags     u8    bit 0 tombstone, bit 1 encoded (value is a codec encoding); others 0
    physical  u64   version: microseconds since the epoch
    logical   u32   version: HLC counter
    expires   f64   absolute expiry, seconds since the epoch; 0 = never
    node_len  u8    version: node id length
    value_len u32
    node_id   node_len bytes, UTF-8
    value     value_len bytes (empty for a tombstone)

Commands (the key travels in ``Request.key`` for single-key commands):

====================  ========================================================
SET / DELETE / REPAIR  request payload = one record (a tombstone for DELETE)
GET                    request payload empty; response = optional record
MULTI-GET              request = key list; response = optional-record list
MULTI-SET              request = entry list (key + record)
partition export       each exported item = one entry (key + record)
====================  ========================================================

where ``optional record`` = ``u8 0`` (absent) or ``u8 1`` + record, ``key`` =
``u32 length`` + bytes, and lists are ``u32 count`` + items.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence

from peer_ring.core import PeerRingError
from peer_ring.kv._record import Record
from peer_ring.kv._versions import MAX_NODE_ID_BYTES, Version

#: Record flag bits.
FLAG_TOMBSTONE = 0x01
FLAG_ENCODED = 0x02
_KNOWN_FLAGS = FLAG_TOMBSTONE | FLAG_ENCODED
#: The flag bits a record may carry.
KNOWN_FLAGS = _KNOWN_FLAGS

_RECORD_HEAD = struct.Struct("<BQIdBI")  # flags, physical, logical, expires, node/value length
_RECORD_HEAD_SIZE = _RECORD_HEAD.size
#: A record's fixed part, and a GET answer's: the presence byte, then the record's fixed
#: part (for ``KVEngine.get_wire``/``export_entries``, which encode from the stored bytes).
RECORD_HEAD = _RECORD_HEAD
GET_RESPONSE_HEAD = struct.Struct("<BBQIdBI")
_U32 = struct.Struct("<I")
#: The length prefix of a key in an entry.
KEY_LENGTH = _U32
_MAX_U32 = 0xFFFF_FFFF
_INF = math.inf
# Build records without NamedTuple's Python-level __new__ (a third of the decoding time).
_new = tuple.__new__
_unpack_head = _RECORD_HEAD.unpack_from
#: Most writer ids remembered by the decoder (bytes -> str); the cache is emptied when full.
NODE_ID_CACHE_SIZE = 1024
_node_ids: dict[bytes, str] = {}
#: The writer ids the decoder has checked (UTF-8 bytes -> str; read-only for others).
known_node_ids = _node_ids


class MalformedPayloadError(PeerRingError, ValueError):
    """A payload received from a peer does not follow the KV wire format."""


# --------------------------------------------------------------------------- encoding


def encode_record(record: Record) -> bytes:
    """Encode one record (the payload of SET, DELETE and REPAIR).

    Raises:
        ValueError: a field cannot be represented (negative version, node id over 255
            bytes, value over 4 GiB, non-finite or negative ``expires``) or a tombstone
            carries a value.
    """
    version = record.version
    node = version.node_id.encode()
    value = record.value
    flags = (FLAG_TOMBSTONE if record.tombstone else 0) | (FLAG_ENCODED if record.encoded else 0)
    expires = record.expires
    if len(node) > MAX_NODE_ID_BYTES or len(value) > _MAX_U32:
        raise ValueError(f"record too large to encode: node id {len(node)} B, value {len(value)} B")
    if not (expires >= 0.0 and math.isfinite(expires)):
        raise ValueError(f"record expiry must be finite and >= 0, got {expires!r}")
    if record.tombstone and (value or record.encoded):
        raise ValueError("a tombstone cannot carry a value or the encoded flag")
    try:
        head = _RECORD_HEAD.pack(
            flags, version.physical, version.logical, expires, len(node), len(value)
        )
    except struct.error as exc:
        raise ValueError(f"record version out of range: {version!r} ({exc})") from None
    return b"".join((head, node, value))


def encode_entry(key: bytes, record: Record) -> bytes:
    """Encode a key and its record (one MULTI-SET item, one exported record)."""
    return b"".join((_U32.pack(len(key)), key, encode_record(record)))


def encode_get_response(record: Record | None) -> bytes:
    """Encode a GET reply: the replica's record, or absent."""
    return b"\x00" if record is None else b"\x01" + encode_record(record)


def encode_keys(keys: Sequence[bytes]) -> bytes:
    """Encode a MULTI-GET request: a list of keys."""
    parts = [_U32.pack(len(keys))]
    for key in keys:
        parts.append(_U32.pack(len(key)))
        parts.append(key)
    return b"".join(parts)


def encode_optional_records(records: Sequence[Record | None]) -> bytes:
    """Encode a MULTI-GET reply: one optional record per requested key, in order."""
    parts = [_U32.pack(len(records))]
    for record in records:
        parts.append(encode_get_response(record))
    return b"".join(parts)


def encode_entries(entries: Iterable[tuple[bytes, Record]]) -> bytes:
    """Encode a MULTI-SET request: a list of (key, record)."""
    items = [encode_entry(key, record) for key, record in entries]
    return _U32.pack(len(items)) + b"".join(items)


# --------------------------------------------------------------------------- decoding


def _fail(what: str, detail: str) -> MalformedPayloadError:
    return MalformedPayloadError(f"malformed {what}: {detail}")


def _read_u32(data: bytes, pos: int, what: str) -> tuple[int, int]:
    if pos + 4 > len(data):
        raise _fail(what, f"truncated length at byte {pos} (payload is {len(data)} bytes)")
    return _U32.unpack_from(data, pos)[0], pos + 4


def _read_bytes(data: bytes, pos: int, what: str) -> tuple[bytes, int]:
    size, pos = _read_u32(data, pos, what)
    end = pos + size
    if end > len(data):
        raise _fail(what, f"{size}-byte field at byte {pos} overruns the {len(data)}-byte payload")
    return data[pos:end], end


def _read_record(data: bytes, pos: int, what: str) -> tuple[Record, int]:
    # The fast path: one test covers every check; only a malformed record takes the slow
    # path (_check_record), which finds which check failed and raises its typed error.
    head_end = pos + _RECORD_HEAD_SIZE
    if head_end > len(data):
        raise _fail(what, f"truncated record header at byte {pos} (payload is {len(data)} bytes)")
    flags, physical, logical, expires, node_len, value_len = _unpack_head(data, pos)
    node_end = head_end + node_len
    end = node_end + value_len
    if (
        end > len(data)
        or flags & ~_KNOWN_FLAGS
        or not 0.0 <= expires < _INF  # also true for NaN
        or (flags & FLAG_TOMBSTONE and (value_len or flags & FLAG_ENCODED))
    ):
        _check_record(data, flags, expires, node_len, value_len, head_end, what)
    node_b = data[head_end:node_end]
    node_id = _node_ids.get(node_b)
    if node_id is None:
        node_id = _node_id(node_b, what)
    version = _new(Version, (physical, logical, node_id))
    return (
        _new(Record, (data[node_end:end], version, expires, flags & 1 != 0, flags & 2 != 0)),
        end,
    )


def _check_record(
    data: bytes,
    flags: int,
    expires: float,
    node_len: int,
    value_len: int,
    head_end: int,
    what: str,
) -> None:
    """Raise the error of a record the fast path found malformed (checked in this order:
    overrun, flags, expiry, node id's UTF-8, tombstone with a value)."""
    if head_end + node_len + value_len > len(data):
        raise _fail(
            what,
            f"record with a {node_len}-byte node id and a {value_len}-byte value "
            f"overruns the {len(data)}-byte payload",
        )
    if flags & ~_KNOWN_FLAGS:
        raise _fail(what, f"unknown record flags 0x{flags:02x}")
    if not 0.0 <= expires < _INF:  # also false for NaN
        raise _fail(what, f"record expiry {expires!r} is not a finite time >= 0")
    _node_id(data[head_end : head_end + node_len], what)
    raise _fail(what, "a tombstone carries a value or the encoded flag")


def _node_id(node_b: bytes, what: str) -> str:
    """Decode a writer id and remember it: a cluster has few writers, and a shared ``str``
    has its hash computed once (the engine and every version comparison use it)."""
    try:
        node_id = node_b.decode()
    except UnicodeDecodeError:
        raise _fail(what, "node id is not valid UTF-8") from None
    if len(_node_ids) >= NODE_ID_CACHE_SIZE:
        _node_ids.clear()  # a peer sending ever new ids costs decodes, never memory
    _node_ids[node_b] = node_id
    return node_id


def _read_count(data: bytes, pos: int, what: str, min_item: int) -> tuple[int, int]:
    count, pos = _read_u32(data, pos, what)
    # Reject absurd counts up front rather than after reading what is there.
    if count * min_item > len(data) - pos:
        raise _fail(what, f"{count} items cannot fit in {len(data) - pos} bytes")
    return count, pos


def _expect_end(data: bytes, pos: int, what: str) -> None:
    if pos != len(data):
        raise _fail(what, f"{len(data) - pos} unexpected trailing bytes")


def decode_record(data: bytes) -> Record:
    """Decode a SET/DELETE/REPAIR payload (exactly one record)."""
    # _read_record inlined for the payload of every replicated write: a well-formed
    # record fills the payload exactly; anything else is decoded again step by step,
    # which raises the precise error.
    if len(data) >= _RECORD_HEAD_SIZE:
        flags, physical, logical, expires, node_len, value_len = _unpack_head(data)
        node_end = _RECORD_HEAD_SIZE + node_len
        if (
            node_end + value_len == len(data)
            and not flags & ~_KNOWN_FLAGS
            and 0.0 <= expires < _INF
            and not (flags & FLAG_TOMBSTONE and (value_len or flags & FLAG_ENCODED))
        ):
            node_b = data[_RECORD_HEAD_SIZE:node_end]
            node_id = _node_ids.get(node_b)
            if node_id is None:
                node_id = _node_id(node_b, "record")
            version = _new(Version, (physical, logical, node_id))
            return _new(Record, (data[node_end:], version, expires, flags & 1 != 0, flags & 2 != 0))
    record, pos = _read_record(data, 0, "record")
    _expect_end(data, pos, "record")
    return record


def decode_entry(data: bytes) -> tuple[bytes, Record]:
    """Decode one (key, record) entry, as exported by a partition."""
    key, pos = _read_bytes(data, 0, "entry")
    record, pos = _read_record(data, pos, "entry")
    _expect_end(data, pos, "entry")
    return key, record


def _read_optional(data: bytes, pos: int, what: str) -> tuple[Record | None, int]:
    if pos >= len(data):
        raise _fail(what, f"truncated presence byte at byte {pos}")
    present = data[pos]
    if present == 0:
        return None, pos + 1
    if present != 1:
        raise _fail(what, f"presence byte must be 0 or 1, got {present}")
    return _read_record(data, pos + 1, what)


def decode_get_response(data: bytes) -> Record | None:
    """Decode a GET reply."""
    if data[:1] == b"\x01":  # the common answer first: one record, nothing after it
        record, pos = _read_record(data, 1, "GET response")
        if pos == len(data):
            return record
    optional, pos = _read_optional(data, 0, "GET response")
    _expect_end(data, pos, "GET response")
    return optional


def decode_keys(data: bytes) -> list[bytes]:
    """Decode a MULTI-GET request."""
    what = "key list"
    count, pos = _read_count(data, 0, what, 4)
    keys = []
    for _ in range(count):
        key, pos = _read_bytes(data, pos, what)
        keys.append(key)
    _expect_end(data, pos, what)
    return keys


def decode_optional_records(data: bytes) -> list[Record | None]:
    """Decode a MULTI-GET reply."""
    what = "record list"
    count, pos = _read_count(data, 0, what, 1)
    records = []
    for _ in range(count):
        record, pos = _read_optional(data, pos, what)
        records.append(record)
    _expect_end(data, pos, what)
    return records


def decode_entries(data: bytes) -> list[tuple[bytes, Record]]:
    """Decode a MULTI-SET request."""
    what = "entry list"
    count, pos = _read_count(data, 0, what, 4 + _RECORD_HEAD_SIZE)
    entries = []
    for _ in range(count):
        key, pos = _read_bytes(data, pos, what)
        record, pos = _read_record(data, pos, what)
        entries.append((key, record))
    _expect_end(data, pos, what)
    return entries


# Names by command, for readers matching the table in the module docs.
encode_set = encode_delete = encode_repair = encode_record
decode_set = decode_delete = decode_repair = decode_record
encode_multi_get = encode_keys
decode_multi_get = decode_keys
encode_multi_get_response = encode_optional_records
decode_multi_get_response = decode_optional_records
encode_multi_set = encode_entries
decode_multi_set = decode_entries
