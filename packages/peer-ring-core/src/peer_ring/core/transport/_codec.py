"""Encoding of ``peer_ring.v1`` frames, with the hot paths kept cheap.

A ``Frame`` is ``repeated Request requests = 1; repeated Response responses = 2;
repeated uint64 cancels = 3``. In the protobuf wire format a message is the concatenation of
its fields, so a frame is simply the concatenation of *parts*, each part one field:
``tag + length + serialized Request`` (and likewise for responses and packed cancels).
Each request or response is therefore serialized once, when it is queued (that also gives
its exact size for the max-message check), and the single writer of a stream only joins
bytes: it never builds a ``Frame`` object. Decoding uses the generated (upb, C) parser.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from peer_ring.core._errors import (
    InvalidArgumentError,
    MessageTooLargeError,
    NotRunningError,
    OverloadedError,
    PeerRingError,
    PeerUnavailableError,
    RequestTimeoutError,
    UnknownCommandError,
)
from peer_ring.core._types import Request, Response, Status, TransferRequest
from peer_ring.core.proto import peer_ring_pb2 as pb

# Field keys: (field_number << 3) | wire_type, wire type 2 = length-delimited.
_REQUESTS_TAG = b"\x0a"  # Frame.requests = 1
_RESPONSES_TAG = b"\x12"  # Frame.responses = 2
_CANCELS_TAG = b"\x1a"  # Frame.cancels = 3 (packed)
_RECORDS_TAG = b"\x0a"  # TransferChunk.records = 1

#: Upper bound of the bytes one cancel id adds to a frame (a 64-bit varint).
CANCEL_ID_BYTES = 10

#: The largest uint32 (``Request.timeout_ms``).
_MAX_UINT32 = 0xFFFFFFFF

_ONE_BYTE = [bytes((i,)) for i in range(128)]

#: Wire status value -> Status; values this version does not know map to ERROR.
_STATUSES: tuple[Status, ...] = tuple(sorted(Status, key=int))
_STATUS_OF_ERROR: tuple[tuple[type[PeerRingError], Status], ...] = (
    (UnknownCommandError, Status.UNKNOWN_COMMAND),
    (InvalidArgumentError, Status.INVALID_ARGUMENT),
    (RequestTimeoutError, Status.TIMEOUT),
    (OverloadedError, Status.OVERLOADED),
    (MessageTooLargeError, Status.TOO_LARGE),
    (PeerUnavailableError, Status.UNAVAILABLE),
    (NotRunningError, Status.UNAVAILABLE),
)


def varint(value: int) -> bytes:
    """Encode a non-negative integer as a protobuf base-128 varint."""
    if value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def status_of(value: int) -> Status:
    """Map a wire status value to :class:`Status` (unknown values become ERROR)."""
    if 0 <= value < len(_STATUSES):
        return _STATUSES[value]
    return Status.ERROR


def timeout_ms(seconds: float) -> int:
    """Seconds -> the wire's ``uint32 timeout_ms`` (rounded up, clamped)."""
    ms = int(seconds * 1000.0 + 0.999)
    return min(max(ms, 0), _MAX_UINT32)


def request_part(rid: int, req: Request, deadline_ms: int) -> bytes:
    """One ``Frame.requests`` entry: tag, length and the serialized ``Request``."""
    body = pb.Request(
        id=rid,
        namespace=req.namespace,
        command=req.command,
        key=req.key,
        payload=req.payload,
        partition=req.partition,
        hint=req.hint,
        timeout_ms=deadline_ms,
    ).SerializeToString()
    return _REQUESTS_TAG + varint(len(body)) + body


def response_part(rid: int, resp: Response) -> bytes:
    """One ``Frame.responses`` entry: tag, length and the serialized ``Response``."""
    body = pb.Response(
        id=rid, status=pb.Status.ValueType(resp.status), payload=resp.payload, error=resp.error
    ).SerializeToString()
    return _RESPONSES_TAG + varint(len(body)) + body


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
    status = Status.ERROR
    for kind, mapped in _STATUS_OF_ERROR:
        if isinstance(exc, kind):
            status = mapped
            break
    return Response(status, b"", str(exc) or type(exc).__name__)


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
