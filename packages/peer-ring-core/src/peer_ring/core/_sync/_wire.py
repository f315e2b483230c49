"""Payloads of the core's internal commands (namespace :data:`INTERNAL`).

Small, fixed binary layouts (big-endian ``struct``), never JSON: they travel inside the
opaque ``payload`` bytes of ordinary requests, so the transport needs no change.

=============  ===========================================  ===============================
command        request payload                              response payload
=============  ===========================================  ===============================
``ping``       incarnation u64, flags u8                    incarnation u64, flags u8,
                                                            [wall clock f64]
``digests``    count u32, (partition u32, root u64)*        count u32, entry*
``handoff``    count u32, partition u32*                    count u32, partition u32*
``leaving``    incarnation u64                              partitions not pulled u32
``delta``      see below                                    flags u8, count u32,
                                                            (length u32 + record)*
=============  ===========================================  ===============================

A digests *entry* is ``partition u32, state u8, equal u8`` followed, when the state is not
NONE and the roots differ, by ``namespaces u16`` and per namespace ``name (u16 length +
UTF-8), buckets u16, (length u16 + digest)*``.

A ``delta`` request (the receiver's version list of some digest buckets of one partition,
see :mod:`~peer_ring.core._sync._delta`) is ``partition u32, budget u32, namespace (u16
length + UTF-8), buckets u8 count + bucket u8*, entries u32 count, (key id u64, version
u16 length + bytes)*``. The response's flags: 1 = more records than the budget allowed
(ask again), 2 = the source has no versioned hooks for the namespace (transfer whole
buckets instead). An older node answers ``delta`` with UNKNOWN_COMMAND, which the receiver
takes as "transfer whole buckets" too.

The ``ping`` response's trailing wall clock (the responder's ``clock.time()``, for the
clock-offset estimate) was added later: decoders read the fixed prefix and ignore what
follows, so an older node reads a newer answer, and an older node's answer (without it)
simply gives no estimate.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from peer_ring.core._errors import InvalidArgumentError
from peer_ring.core._sync._digests import HoldState, NamespaceDigests, RemotePartition

#: Namespace of the core's own commands; applications cannot register in it.
INTERNAL = "__peer_ring__"

#: ``ping`` flag: the node is leaving the cluster.
FLAG_LEAVING = 0x01

_PING = struct.Struct(">QB")
_WALL = struct.Struct(">d")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_ROOT = struct.Struct(">IQ")
_ENTRY = struct.Struct(">IBB")
_DELTA_HEAD = struct.Struct(">II")
_KEY_VERSION = struct.Struct(">QH")
_DELTA_FLAGS = struct.Struct(">BI")

#: ``delta`` response flag: the source left records out (budget); ask again.
DELTA_MORE = 0x01
#: ``delta`` response flag: the source cannot filter by version; transfer whole buckets.
DELTA_UNSUPPORTED = 0x02


_T = TypeVar("_T")


def _strict(decode: Callable[[bytes], _T]) -> Callable[[bytes], _T]:
    """Turn ``struct`` errors on truncated input into a clear ``InvalidArgumentError``
    (a ``ValueError``), which the node answers as INVALID_ARGUMENT instead of ERROR."""

    @functools.wraps(decode)
    def wrapper(data: bytes) -> _T:
        try:
            return decode(data)
        except struct.error as exc:
            raise InvalidArgumentError(f"malformed {decode.__name__[7:]} payload: {exc}") from None

    return wrapper


def encode_ping(incarnation: int, flags: int, wall: float | None = None) -> bytes:
    """A ``ping`` request or response (a response carries the responder's ``wall`` clock)."""
    data = _PING.pack(incarnation, flags)
    return data if wall is None else data + _WALL.pack(wall)


@_strict
def decode_ping(data: bytes) -> tuple[int, int]:
    """``(incarnation, flags)`` of a ``ping`` payload."""
    incarnation, flags = _PING.unpack_from(data)
    return int(incarnation), int(flags)


def decode_ping_wall(data: bytes) -> float | None:
    """The responder's wall clock in a ``ping`` response; ``None`` from an older node
    (or a value that is not a finite number)."""
    if len(data) < _PING.size + _WALL.size:
        return None
    (wall,) = _WALL.unpack_from(data, _PING.size)
    return float(wall) if math.isfinite(wall) else None


def encode_partitions(partitions: Iterable[int]) -> bytes:
    """A list of partitions (``handoff`` request and response)."""
    items = list(partitions)
    return _U32.pack(len(items)) + b"".join(_U32.pack(p) for p in items)


@_strict
def decode_partitions(data: bytes) -> list[int]:
    """The partitions of :func:`encode_partitions`."""
    (count,) = _U32.unpack_from(data)
    return [_U32.unpack_from(data, 4 + 4 * i)[0] for i in range(count)]


def encode_u64(value: int) -> bytes:
    """One unsigned 64-bit integer (``leaving`` request)."""
    return _U64.pack(value)


@_strict
def decode_u64(data: bytes) -> int:
    """The integer of :func:`encode_u64`."""
    return int(_U64.unpack_from(data)[0])


def encode_u32(value: int) -> bytes:
    """One unsigned 32-bit integer (``leaving`` response)."""
    return _U32.pack(value)


@_strict
def decode_u32(data: bytes) -> int:
    """The integer of :func:`encode_u32`."""
    return int(_U32.unpack_from(data)[0])


def encode_digest_request(roots: Sequence[tuple[int, int]]) -> bytes:
    """A ``digests`` request: ``(partition, root of the asker's copy)`` pairs."""
    return _U32.pack(len(roots)) + b"".join(_ROOT.pack(p, r) for p, r in roots)


@_strict
def decode_digest_request(data: bytes) -> list[tuple[int, int]]:
    """The pairs of :func:`encode_digest_request`."""
    (count,) = _U32.unpack_from(data)
    return [
        (int(p), int(r)) for p, r in (_ROOT.unpack_from(data, 4 + 12 * i) for i in range(count))
    ]


def encode_digest_response(entries: Sequence[RemotePartition]) -> bytes:
    """A ``digests`` response (see the module docstring for the layout)."""
    out = [_U32.pack(len(entries))]
    for entry in entries:
        out.append(_ENTRY.pack(entry.partition, int(entry.state), 1 if entry.equal else 0))
        if entry.state is HoldState.NONE or entry.equal:
            continue
        out.append(_U16.pack(len(entry.digests)))
        for namespace in sorted(entry.digests):
            name = namespace.encode()
            buckets = entry.digests[namespace]
            out.append(_U16.pack(len(name)) + name + _U16.pack(len(buckets)))
            out.extend(_U16.pack(len(d)) + d for d in buckets)
    return b"".join(out)


#: The hold states by value (indexing a tuple is much cheaper than calling the enum).
_HOLD_STATES = tuple(HoldState)


def decode_digest_response(data: bytes) -> list[RemotePartition]:
    """The entries of :func:`encode_digest_response`.

    Raises:
        ValueError: the payload is truncated or malformed.
    """
    return list(iter_digest_response(data))


def iter_digest_response(data: bytes) -> Iterator[RemotePartition]:
    """The entries of :func:`encode_digest_response`, one at a time (a caller decoding
    thousands of entries can give the event loop turns between them).

    Raises:
        ValueError: the payload is truncated or malformed (possibly after some entries).
    """
    try:
        (count,) = _U32.unpack_from(data)
        pos = 4
        for _ in range(count):
            partition, state, equal = _ENTRY.unpack_from(data, pos)
            pos += _ENTRY.size
            hold = _HOLD_STATES[state]  # not HoldState(state): an enum call per entry
            digests: dict[str, list[bytes]] = {}
            if hold is not HoldState.NONE and not equal:
                (namespaces,) = _U16.unpack_from(data, pos)
                pos += 2
                for _ in range(namespaces):
                    (size,) = _U16.unpack_from(data, pos)
                    name = data[pos + 2 : pos + 2 + size].decode()
                    pos += 2 + size
                    (buckets,) = _U16.unpack_from(data, pos)
                    pos += 2
                    values = []
                    for _ in range(buckets):
                        (size,) = _U16.unpack_from(data, pos)
                        values.append(bytes(data[pos + 2 : pos + 2 + size]))
                        pos += 2 + size
                    digests[name] = values
            yield RemotePartition(int(partition), hold, bool(equal), digests)
        if pos != len(data):
            raise ValueError(f"{len(data) - pos} trailing bytes")
    except (struct.error, UnicodeDecodeError, IndexError) as exc:
        raise ValueError(f"malformed digests payload: {exc}") from None


@dataclass(frozen=True, slots=True)
class DeltaRequest:
    """A ``delta`` request: the asker's version list of ``buckets`` of one partition.

    Attributes:
        namespace: the application namespace.
        partition: the partition.
        budget: largest answer, in record bytes, the asker wants.
        buckets: the digest buckets asked for.
        entries: ``(key id, version)`` of every record the asker holds in them.
    """

    namespace: str
    partition: int
    budget: int
    buckets: tuple[int, ...]
    entries: list[tuple[int, bytes]]


def encode_delta_request(request: DeltaRequest) -> bytes:
    """A ``delta`` request (see the module docstring for the layout).

    Raises:
        ValueError: a field does not fit its layout (a bucket over 255, a version over
            65,535 bytes, a namespace over 65,535 bytes).
    """
    name = request.namespace.encode()
    if len(name) > 0xFFFF or len(request.buckets) > 0xFF:
        raise ValueError("namespace or bucket list too long for a delta request")
    out = [
        _DELTA_HEAD.pack(request.partition, request.budget),
        _U16.pack(len(name)),
        name,
        bytes([len(request.buckets)]),
        bytes(request.buckets),
        _U32.pack(len(request.entries)),
    ]
    for key_id, version in request.entries:
        out.append(_KEY_VERSION.pack(key_id, len(version)))
        out.append(version)
    return b"".join(out)


def decode_delta_request(data: bytes) -> DeltaRequest:
    """The request of :func:`encode_delta_request`.

    Raises:
        ValueError: the payload is truncated, malformed or has trailing bytes.
    """
    try:
        partition, budget = _DELTA_HEAD.unpack_from(data)
        pos = _DELTA_HEAD.size
        (size,) = _U16.unpack_from(data, pos)
        pos += 2
        if pos + size > len(data):
            raise ValueError("namespace truncated")
        namespace = bytes(data[pos : pos + size]).decode()
        pos += size
        if pos >= len(data):
            raise ValueError("bucket count missing")
        count = data[pos]
        buckets = tuple(data[pos + 1 : pos + 1 + count])
        if len(buckets) != count:
            raise ValueError("bucket list truncated")
        pos += 1 + count
        (count,) = _U32.unpack_from(data, pos)
        pos += 4
        entries = []
        for _ in range(count):
            key_id, size = _KEY_VERSION.unpack_from(data, pos)
            pos += _KEY_VERSION.size
            version = bytes(data[pos : pos + size])
            if len(version) != size:
                raise ValueError("version truncated")
            pos += size
            entries.append((int(key_id), version))
        if pos != len(data):
            raise ValueError(f"{len(data) - pos} trailing bytes")
        return DeltaRequest(namespace, int(partition), int(budget), buckets, entries)
    except (struct.error, UnicodeDecodeError) as exc:
        raise ValueError(f"malformed delta payload: {exc}") from None


def encode_delta_response(records: Sequence[bytes], flags: int) -> bytes:
    """A ``delta`` response: ``flags`` (:data:`DELTA_MORE`, :data:`DELTA_UNSUPPORTED`)
    and the records."""
    out = [_DELTA_FLAGS.pack(flags, len(records))]
    for record in records:
        out.append(_U32.pack(len(record)))
        out.append(record)
    return b"".join(out)


def decode_delta_response(data: bytes) -> tuple[int, list[bytes]]:
    """``(flags, records)`` of :func:`encode_delta_response`.

    Raises:
        ValueError: the payload is truncated, malformed or has trailing bytes.
    """
    try:
        flags, count = _DELTA_FLAGS.unpack_from(data)
        pos = _DELTA_FLAGS.size
        records = []
        for _ in range(count):
            (size,) = _U32.unpack_from(data, pos)
            pos += 4
            record = bytes(data[pos : pos + size])
            if len(record) != size:
                raise ValueError("record truncated")
            pos += size
            records.append(record)
        if pos != len(data):
            raise ValueError(f"{len(data) - pos} trailing bytes")
        return int(flags), records
    except struct.error as exc:
        raise ValueError(f"malformed delta payload: {exc}") from None


def namespace_digests(digests: NamespaceDigests) -> dict[str, list[bytes]]:
    """A plain, mutable copy (for building responses)."""
    return {ns: list(buckets) for ns, buckets in digests.items()}
