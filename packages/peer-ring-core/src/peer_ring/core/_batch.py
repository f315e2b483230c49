"""The internal batch command: many keys of one command in one request to one peer.

``execute_many`` sends each peer one request (namespace :data:`BATCH`, command = the
application command) whose payload carries that peer's items; the receiving dispatcher
runs the same per-key path as for single requests (admission, hints, the handler) for
each item and answers with one status and payload per item, in order.

Encoding (big-endian, fixed-width lengths: cheap to build with ``struct``)::

    request  = u16 namespace_len, namespace, u32 count,
               count * (u32 partition, u32 key_len, u32 payload_len, u16 hint_len,
                        key, payload, hint)
    response = u32 count, count * (u8 status, u32 len, payload-or-error-message)
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NamedTuple

from peer_ring.core._errors import InvalidArgumentError
from peer_ring.core._types import Response, Status

#: Reserved namespace of batch requests (never registered by an application).
BATCH = "__peer_ring_batch__"

_HEAD = struct.Struct(">H")
_COUNT = struct.Struct(">I")
_ITEM = struct.Struct(">IIIH")
_RESULT = struct.Struct(">BI")

#: Bytes of framing per item (request side), for sizing frames.
ITEM_OVERHEAD = _ITEM.size


class BatchItem(NamedTuple):
    """One key of a batch request."""

    key: bytes
    payload: bytes
    partition: int
    hint: str


def item_size(key: bytes, payload: bytes, hint: str) -> int:
    """Encoded size of one request item (hints are ASCII addresses)."""
    return ITEM_OVERHEAD + len(key) + len(payload) + len(hint)


def encode_items(namespace: str, items: Sequence[BatchItem]) -> bytes:
    """The payload of one batch request."""
    ns = namespace.encode()
    parts: list[bytes] = [_HEAD.pack(len(ns)), ns, _COUNT.pack(len(items))]
    pack = _ITEM.pack
    append = parts.append
    for key, payload, partition, hint in items:
        h = hint.encode()
        append(pack(partition, len(key), len(payload), len(h)))
        append(key)
        append(payload)
        append(h)
    return b"".join(parts)


def decode_items(data: bytes) -> tuple[str, list[BatchItem]]:
    """Inverse of :func:`encode_items`.

    Raises:
        InvalidArgumentError: the payload is truncated or malformed.
    """
    try:
        (ns_len,) = _HEAD.unpack_from(data, 0)
        pos = _HEAD.size
        namespace = data[pos : pos + ns_len].decode()
        pos += ns_len
        (count,) = _COUNT.unpack_from(data, pos)
        pos += _COUNT.size
        # Each item takes at least its header: a count no payload can hold is refused
        # before anything is allocated for it.
        if count * _ITEM.size > len(data) - pos:
            raise InvalidArgumentError(f"batch of {count} items does not fit its payload")
        items: list[BatchItem] = []
        unpack = _ITEM.unpack_from
        size = _ITEM.size
        end = len(data)
        for _ in range(count):
            partition, key_len, payload_len, hint_len = unpack(data, pos)
            pos += size
            stop = pos + key_len + payload_len + hint_len
            if stop > end:
                raise InvalidArgumentError("truncated batch item")
            key = data[pos : pos + key_len]
            pos += key_len
            payload = data[pos : pos + payload_len]
            pos += payload_len
            hint = data[pos:stop].decode()
            pos = stop
            items.append(BatchItem(key, payload, partition, hint))
    except (struct.error, UnicodeDecodeError) as err:
        raise InvalidArgumentError(f"malformed batch request: {err}") from None
    if pos != end:
        raise InvalidArgumentError(f"{end - pos} trailing bytes after a batch request")
    return namespace, items


def encode_results(responses: Sequence[Response]) -> bytes:
    """The payload of a batch response: one status and payload (or error) per item."""
    parts: list[bytes] = [_COUNT.pack(len(responses))]
    pack = _RESULT.pack
    append = parts.append
    for r in responses:
        data = r.payload if r.status == Status.OK else r.error.encode()
        append(pack(int(r.status), len(data)))
        append(data)
    return b"".join(parts)


def decode_results(data: bytes, expected: int) -> list[Response]:
    """Inverse of :func:`encode_results`, checking the item count.

    Raises:
        InvalidArgumentError: the payload is malformed or has the wrong number of items.
    """
    try:
        (count,) = _COUNT.unpack_from(data, 0)
        if count != expected:
            raise InvalidArgumentError(f"batch response has {count} items, expected {expected}")
        pos = _COUNT.size
        out: list[Response] = []
        unpack = _RESULT.unpack_from
        size = _RESULT.size
        for _ in range(count):
            code, length = unpack(data, pos)
            pos += size
            chunk = data[pos : pos + length]
            if len(chunk) != length:
                raise InvalidArgumentError("truncated batch response")
            pos += length
            try:
                status = Status(code)
            except ValueError:
                status = Status.ERROR
            if status is Status.OK:
                out.append(Response(status, chunk, ""))
            else:
                out.append(Response(status, b"", chunk.decode(errors="replace")))
    except struct.error as err:
        raise InvalidArgumentError(f"malformed batch response: {err}") from None
    return out
