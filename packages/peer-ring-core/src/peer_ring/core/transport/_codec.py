"""Encoding of ``peer_ring.v1`` frames, with the hot paths kept cheap.

A ``Frame`` is ``repeated Request requests = 1; repeated Response responses = 2;
repeated uint64 cancels = 3``. In the protobuf wire format a message is the concatenation of
its fields, so a frame is simply the concatenation of *parts*, each part one field:
``tag + length + encoded Request`` (and likewise for responses and packed cancels).
Each request or response is therefore encoded once, when it is queued (that also gives
its exact size for the max-message check), and the single writer of a stream only joins
bytes: it never builds a ``Frame`` object.

Requests and responses are encoded by hand (measured: about twice as fast as the generated
classes, whose keyword-argument construction dominates); everything is decoded with the
generated upb (C) parser, which is fast and validates the input.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from peer_ring.core._errors import MessageTooLargeError
from peer_ring.core._status import status_for_error
from peer_ring.core._types import Request, Response, Status, TransferRequest
from peer_ring.core.proto import peer_ring_pb2 as pb

# Field keys: (field_number << 3) | wire_type, wire type 2 = length-delimited.
_REQUESTS_TAG = b"\x0a"  # Frame.requests = 1
_RESPONSES_TAG = b"\x12"  # Frame.responses = 2
_CANCELS_TAG = b"\x1a"  # Frame.cancels = 3 (packed)
_RECORDS_TAG = b"\x0a"  # TransferChunk.records = 1

#: Upper bound of the bytes one cancel id adds to a frame (a 64-bit varint).
CANCEL_ID_BYTES = 10

_MAX_UINT32 = 0xFFFFFFFF
_MAX_INT32 = 0x7FFFFFFF  # enum values are int32 on the wire
_MAX_UINT64 = 0xFFFFFFFFFFFFFFFF

#: Encoded (namespace, command, hint, timeout) fields, by value: see ``_request_head``.
_REQUEST_HEADS: dict[tuple[str, str, str, float], bytes] = {}
_MAX_HEADS = 4096

_ONE_BYTE = [bytes((i,)) for i in range(128)]

#: Wire status value -> Status; values this version does not know map to ERROR.
STATUSES: tuple[Status, ...] = tuple(sorted(Status, key=int))


def varint(value: int) -> bytes:
    """Encode an unsigned integer as a protobuf base-128 varint.

    Raises:
        ValueError: ``value`` is negative or does not fit in 64 bits.
    """
    # Unrolled for the sizes the hot path sees (lengths, request ids): the loop below costs
    # several times more, and every request encodes five varints.
    if value < 0x80:
        if value < 0:
            raise ValueError(f"{value} is not a 64-bit unsigned integer")
        return _ONE_BYTE[value]
    if value < 0x4000:
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    if value < 0x200000:
        return bytes(((value & 0x7F) | 0x80, ((value >> 7) & 0x7F) | 0x80, value >> 14))
    if value < 0x10000000:
        return bytes(
            (
                (value & 0x7F) | 0x80,
                ((value >> 7) & 0x7F) | 0x80,
                ((value >> 14) & 0x7F) | 0x80,
                value >> 21,
            )
        )
    if value > _MAX_UINT64:
        raise ValueError(f"{value} is not a 64-bit unsigned integer")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def status_of(value: int) -> Status:
    """Map a wire status value to :class:`Status` (unknown values become ERROR)."""
    if 0 <= value < len(STATUSES):
        return STATUSES[value]
    return Status.ERROR


def timeout_ms(seconds: float) -> int:
    """Seconds -> the wire's ``uint32 timeout_ms`` (rounded up, clamped)."""
    ms = int(seconds * 1000.0 + 0.999)
    return min(max(ms, 0), _MAX_UINT32)


def _request_head(namespace: str, command: str, hint: str, timeout: float) -> bytes:
    """The fields of a Request that repeat from request to request, encoded once."""
    head = _REQUEST_HEADS.get((namespace, command, hint, timeout))
    if head is None:
        parts: list[bytes] = []
        for tag, text in ((b"\x12", namespace), (b"\x1a", command), (b"\x3a", hint)):
            if text:
                raw = text.encode()
                parts += (tag, varint(len(raw)), raw)
        ms = timeout_ms(timeout)
        if ms:
            parts += (b"\x40", varint(ms))
        head = b"".join(parts)
        if len(_REQUEST_HEADS) >= _MAX_HEADS:
            _REQUEST_HEADS.clear()  # bounded: namespaces/commands/hints are few in practice
        _REQUEST_HEADS[(namespace, command, hint, timeout)] = head
    return head


def request_part(rid: int, req: Request, timeout: float) -> bytes:
    """One ``Frame.requests`` entry for ``req`` (see :func:`request_fields_part`)."""
    return request_fields_part(
        rid, req.namespace, req.command, req.key, req.payload, req.partition, req.hint, timeout
    )


def request_fields_part(
    rid: int,
    namespace: str,
    command: str,
    key: bytes,
    payload: bytes,
    partition: int,
    hint: str,
    timeout: float,
) -> bytes:
    """One ``Frame.requests`` entry: tag, length and the encoded ``Request``.

    Encoded by hand: about twice as fast as building a generated message from keyword
    arguments and serializing it. Field order and the explicit empty
    ``key``/``payload``/``partition`` are valid protobuf; any parser reads the same message
    (``tests/test_grpc_transport_codec.py`` checks this). The varints of the hot path (ids
    below 2**21, lengths and partitions below 2**14) are built inline, not by a call to
    :func:`varint`.

    Raises:
        TypeError: ``key`` or ``payload`` is not bytes-like.
        ValueError: ``partition`` or ``rid`` is out of range, or a text field cannot be
            encoded as UTF-8.
    """
    head = _REQUEST_HEADS.get((namespace, command, hint, timeout))
    if head is None:
        head = _request_head(namespace, command, hint, timeout)
    n = len(key)
    m = len(payload)
    if not 0 <= partition <= _MAX_UINT32:
        raise ValueError(f"partition {partition} is not a 32-bit unsigned integer")
    body = b"\x08%b%b\x22%b%b\x2a%b%b\x30%b" % (
        _ONE_BYTE[rid]
        if 0 <= rid < 0x80
        else bytes(((rid & 0x7F) | 0x80, rid >> 7))
        if 0x80 <= rid < 0x4000
        else bytes(((rid & 0x7F) | 0x80, ((rid >> 7) & 0x7F) | 0x80, rid >> 14))
        if 0x4000 <= rid < 0x200000
        else varint(rid),
        head,
        _ONE_BYTE[n]
        if n < 0x80
        else bytes(((n & 0x7F) | 0x80, n >> 7))
        if n < 0x4000
        else varint(n),
        key,
        _ONE_BYTE[m]
        if m < 0x80
        else bytes(((m & 0x7F) | 0x80, m >> 7))
        if m < 0x4000
        else varint(m),
        payload,
        _ONE_BYTE[partition]
        if partition < 0x80
        else bytes(((partition & 0x7F) | 0x80, partition >> 7))
        if partition < 0x4000
        else varint(partition),
    )
    size = len(body)
    if size < 0x80:
        return b"\x0a" + _ONE_BYTE[size] + body
    if size < 0x4000:
        return b"\x0a%b%b" % (bytes(((size & 0x7F) | 0x80, size >> 7)), body)
    return b"\x0a" + varint(size) + body


def ok_response_part(rid: int, payload: bytes) -> bytes:
    """One ``Frame.responses`` entry for a success: ``response_part(rid, Response(OK,
    payload))`` without the :class:`Response` (the replica's hot path)."""
    n = len(payload)
    rv = (
        _ONE_BYTE[rid]
        if 0 <= rid < 0x80
        else bytes(((rid & 0x7F) | 0x80, rid >> 7))
        if 0x80 <= rid < 0x4000
        else bytes(((rid & 0x7F) | 0x80, ((rid >> 7) & 0x7F) | 0x80, rid >> 14))
        if 0x4000 <= rid < 0x200000
        else varint(rid)
    )
    size = 2 + len(rv) + n + (1 if n < 0x80 else 2 if n < 0x4000 else len(varint(n)))
    return b"\x12%b\x08%b\x1a%b%b" % (
        _ONE_BYTE[size]
        if size < 0x80
        else bytes(((size & 0x7F) | 0x80, size >> 7))
        if size < 0x4000
        else varint(size),
        rv,
        _ONE_BYTE[n]
        if n < 0x80
        else bytes(((n & 0x7F) | 0x80, n >> 7))
        if n < 0x4000
        else varint(n),
        payload,
    )


def response_part(rid: int, resp: Response) -> bytes:
    """One ``Frame.responses`` entry: tag, length and the encoded ``Response``.

    Raises:
        TypeError: ``payload`` is not bytes-like.
        ValueError: ``status`` is not a valid status value.
    """
    payload = resp.payload
    n = len(payload)
    rv = (
        _ONE_BYTE[rid]
        if 0 <= rid < 0x80
        else bytes(((rid & 0x7F) | 0x80, rid >> 7))
        if 0x80 <= rid < 0x4000
        else bytes(((rid & 0x7F) | 0x80, ((rid >> 7) & 0x7F) | 0x80, rid >> 14))
        if 0x4000 <= rid < 0x200000
        else varint(rid)
    )
    status = int(resp.status)
    error = resp.error
    if status == 0 and not error:  # the common case
        size = 2 + len(rv) + n + (1 if n < 0x80 else 2 if n < 0x4000 else len(varint(n)))
        return b"\x12%b\x08%b\x1a%b%b" % (
            _ONE_BYTE[size]
            if size < 0x80
            else bytes(((size & 0x7F) | 0x80, size >> 7))
            if size < 0x4000
            else varint(size),
            rv,
            _ONE_BYTE[n]
            if n < 0x80
            else bytes(((n & 0x7F) | 0x80, n >> 7))
            if n < 0x4000
            else varint(n),
            payload,
        )
    if not 0 <= status <= _MAX_INT32:
        raise ValueError(f"invalid status {status}")
    sv = varint(status)
    pv = varint(n)
    raw = error.encode()
    ev = varint(len(raw))
    size = 4 + len(rv) + len(sv) + len(pv) + len(payload) + len(ev) + len(raw)
    return b"\x12%b\x08%b\x10%b\x1a%b%b\x22%b%b" % (
        varint(size),
        rv,
        sv,
        pv,
        payload,
        ev,
        raw,
    )


def cancel_parts(ids: Sequence[int], max_bytes: int) -> Iterator[bytes]:
    """``Frame.cancels`` entries (packed), each at most about ``max_bytes`` long."""
    per_part = max(1, (max_bytes - 16) // CANCEL_ID_BYTES)
    for start in range(0, len(ids), per_part):
        body = b"".join(varint(i) for i in ids[start : start + per_part])
        yield _CANCELS_TAG + varint(len(body)) + body


def join_frames(parts: Iterable[bytes], max_bytes: int) -> list[bytes]:
    """Concatenate parts into as few frames as possible, each at most ``max_bytes``.

    A part larger than ``max_bytes`` gets a frame of its own (callers check sizes before
    queueing, so this only happens for cancel parts at absurdly small limits).
    """
    if not isinstance(parts, list):
        parts = list(parts)
    # The common case, one frame: sized and joined in C (no Python call per part).
    if sum(map(len, parts)) <= max_bytes:
        return [b"".join(parts)] if parts else []
    frames: list[bytes] = []
    batch: list[bytes] = []
    size = 0
    for part in parts:
        n = len(part)
        if batch and size + n > max_bytes:
            frames.append(b"".join(batch))
            batch = []
            size = 0
        batch.append(part)
        size += n
    if batch:
        frames.append(b"".join(batch))
    return frames


def request_from_pb(msg: pb.Request) -> Request:
    """A wire ``Request`` as the value type handlers receive."""
    return Request(
        msg.namespace,
        msg.command,
        msg.key,
        msg.payload,
        msg.partition,
        msg.hint,
        msg.timeout_ms / 1000.0,
    )


def error_response(exc: BaseException) -> Response:
    """The response for a handler that raised ``exc``.

    Typed peer-ring errors keep their meaning on the wire (an ``UnknownCommandError`` raised
    by a handler arrives as ``UNKNOWN_COMMAND``); anything else is ``ERROR``.
    """
    return Response(status_for_error(exc), b"", str(exc) or type(exc).__name__)


def encode_transfer_request(req: TransferRequest) -> bytes:
    """Serialize a :class:`TransferRequest` for the ``Transfer`` RPC."""
    return pb.TransferRequest(
        namespace=req.namespace, partition=req.partition, buckets=req.buckets
    ).SerializeToString()


def decode_transfer_request(data: bytes) -> TransferRequest:
    """Parse a ``Transfer`` RPC request (raises ``google.protobuf.message.DecodeError``)."""
    msg = pb.TransferRequest.FromString(data)
    return TransferRequest(msg.namespace, msg.partition, tuple(msg.buckets))


class RecordTooLargeError(MessageTooLargeError):
    """A single transfer record cannot fit in a message of the configured size."""


def transfer_chunks(records: Sequence[bytes], max_bytes: int) -> list[bytes]:
    """Serialized ``TransferChunk`` messages holding ``records``, each at most ``max_bytes``.

    Raises:
        RecordTooLargeError: one record does not fit in a chunk of its own.
    """
    parts = []
    for record in records:
        part = _RECORDS_TAG + varint(len(record)) + record
        if len(part) > max_bytes:
            raise RecordTooLargeError(
                f"transfer record of {len(record)} bytes exceeds max_message_bytes={max_bytes}"
            )
        parts.append(part)
    return join_frames(parts, max_bytes)


def decode_transfer_chunk(data: bytes) -> list[bytes]:
    """Parse a ``TransferChunk`` into its records."""
    return list(pb.TransferChunk.FromString(data).records)
