"""Messages between nodes: a hit request, a decision (optionally followed by the key's new
entry, see :func:`split_answer`), a key's replicated entry, and the batch of hits a node
forwards to one owner in one message with its answers (:func:`encode_hits`,
:func:`answer_ok`).

All big-endian with a leading version byte; every decoder raises
:class:`~peer_ring.ratelimit.CorruptStateError` on malformed input, so a bad peer message
fails that one request and leaves the node running.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from peer_ring.ratelimit._decision import Decision
from peer_ring.ratelimit._errors import CorruptStateError, RateLimitError
from peer_ring.ratelimit._limit import Algorithm, Limit
from peer_ring.ratelimit._state import State, decode_state, encode_state

WIRE_VERSION = 1

# version, algorithm, limit, period, burst (0: none), cost
_HIT = struct.Struct(">BBqdqq")
# version, allowed, limit, remaining, reset_after, retry_after (-1: never)
_DECISION = struct.Struct(">BBqqdd")
# version, seq, expires (offset from the encoder's now), key length
_ENTRY = struct.Struct(">BQdH")


def encode_hit(limit: Limit, cost: int) -> bytes:
    """A hit request for the key's owner."""
    return _HIT.pack(
        WIRE_VERSION, limit.algorithm.value, limit.limit, limit.period, limit.burst or 0, cost
    )


#: Decoded hit requests by their bytes: a service uses few distinct limits, and building a
#: Limit (validation included) cost more on the owner than deciding the hit.
_HIT_CACHE: dict[bytes, tuple[Limit, int]] = {}
_HIT_CACHE_SIZE = 4096


def decode_hit(data: bytes) -> tuple[Limit, int]:
    """Decode :func:`encode_hit`; a bad limit inside is a :class:`CorruptStateError`."""
    hit = _HIT_CACHE.get(data)
    if hit is not None:
        return hit
    hit = _decode_hit(data)
    if len(_HIT_CACHE) >= _HIT_CACHE_SIZE:
        _HIT_CACHE.clear()
    _HIT_CACHE[bytes(data)] = hit
    return hit


def _decode_hit(data: bytes) -> tuple[Limit, int]:
    try:
        version, algo, count, period, burst, cost = _HIT.unpack(data)
    except struct.error as exc:
        raise CorruptStateError(f"malformed hit request ({len(data)} bytes)") from exc
    if version != WIRE_VERSION:
        raise CorruptStateError(f"unsupported hit request version {version}")
    try:
        limit = Limit(count, period, burst or None, Algorithm.parse(algo))
    except RateLimitError as exc:
        raise CorruptStateError(f"hit request with a bad limit: {exc}") from exc
    return limit, cost


def encode_decision(d: Decision) -> bytes:
    """A decision, as the owner answers it."""
    retry = -1.0 if math.isinf(d.retry_after) else d.retry_after
    return _DECISION.pack(WIRE_VERSION, d.allowed, d.limit, d.remaining, d.reset_after, retry)


def decode_decision(data: bytes, source: str = "owner") -> Decision:
    """Decode :func:`encode_decision`."""
    try:
        version, allowed, limit, remaining, reset, retry = _DECISION.unpack(data)
    except struct.error as exc:
        raise CorruptStateError(f"malformed decision ({len(data)} bytes)") from exc
    if version != WIRE_VERSION:
        raise CorruptStateError(f"unsupported decision version {version}")
    return Decision(
        bool(allowed), limit, remaining, reset, math.inf if retry < 0 else retry, source
    )


def split_answer(data: bytes) -> tuple[bytes, bytes]:
    """An owner's answer to a forwarded hit: ``(decision, entry record or b"")``.

    The owner appends the key's new entry record (:func:`encode_entry`) to the decision
    when the forwarding node is the key's other replica: the answer then replicates the
    state too, and no separate replication message is needed for that hit.
    """
    return data[: _DECISION.size], data[_DECISION.size :]


@dataclass(slots=True)
class Entry:
    """One key's state on one node: ``seq`` orders the owner's successive decisions.

    ``state`` is None for a key that was reset (a tombstone: it still carries its seq, so
    an older record arriving late cannot bring the old state back). ``expires`` is the time
    on this node's clock from which the entry is equivalent to no entry.
    """

    seq: int
    state: State | None
    expires: float


def encode_entry(key: bytes, entry: Entry, now: float) -> bytes:
    """A self-describing record (key included) of an entry, times relative to ``now``."""
    body = b"" if entry.state is None else encode_state(entry.state, now)
    return _ENTRY.pack(WIRE_VERSION, entry.seq, entry.expires - now, len(key)) + key + body


def decode_entry(data: bytes, now: float) -> tuple[bytes, Entry]:
    """Decode :func:`encode_entry` with times on this node's clock (``now``)."""
    if type(data) is not bytes:
        data = bytes(data)
    try:
        version, seq, expires, klen = _ENTRY.unpack_from(data)
    except struct.error as exc:
        raise CorruptStateError(f"malformed entry record ({len(data)} bytes)") from exc
    if version != WIRE_VERSION:
        raise CorruptStateError(f"unsupported entry record version {version}")
    if not math.isfinite(expires):
        raise CorruptStateError("entry record with a non-finite expiry")
    start = _ENTRY.size
    if len(data) < start + klen:
        raise CorruptStateError("entry record shorter than its key")
    key = data[start : start + klen]
    body = data[start + klen :]
    state = decode_state(body, now) if body else None
    return key, Entry(seq, state, expires + now)


_LEN = struct.Struct(">I")


def pack_records(records: list[bytes]) -> bytes:
    """Several records in one payload (``u32 length`` before each)."""
    pack = _LEN.pack
    return b"".join([pack(len(r)) + r for r in records])


def unpack_records(data: bytes) -> list[bytes]:
    """Inverse of :func:`pack_records`; raises :class:`CorruptStateError` on bad framing."""
    # Hot: every forwarded hit, its answer and every replicated state is one record.
    if type(data) is not bytes:
        data = bytes(data)
    out: list[bytes] = []
    append = out.append
    unpack = _LEN.unpack_from
    end = len(data)
    pos = 0
    while pos < end:
        start = pos + 4
        if start > end:
            raise CorruptStateError("truncated record length")
        stop = start + unpack(data, pos)[0]
        if stop > end:
            raise CorruptStateError("truncated record")
        append(data[start:stop])
        pos = stop
    return out


#: Status byte of each answer in an owner's reply to a batch of hits.
ANSWER_OK = 0
ANSWER_NOT_OWNER = 1
ANSWER_NOT_READY = 2
ANSWER_BAD = 3


def encode_hits(items: list[tuple[bytes, bytes]]) -> bytes:
    """Hits ``(key, encode_hit(...))`` for one owner, in one message (:func:`decode_hits`)."""
    return pack_records([hit + key for key, hit in items])


def decode_hits(data: bytes) -> list[tuple[bytes, bytes]]:
    """Inverse of :func:`encode_hits`: ``(key, hit request)`` pairs, the hit not yet decoded
    (a bad one fails that hit only, see :func:`decode_hit`)."""
    n = _HIT.size
    out: list[tuple[bytes, bytes]] = []
    for rec in unpack_records(data):
        if len(rec) < n:
            raise CorruptStateError(f"hit record of {len(rec)} bytes")
        out.append((rec[n:], rec[:n]))
    return out


def answer_ok(decision: bytes) -> bytes:
    """One admitted-for-decision answer of a batch (the decision, maybe the entry after it)."""
    return b"\x00" + decision


def answer_error(status: int, message: str = "") -> bytes:
    """One refused answer of a batch: ``status`` and a message."""
    return bytes((status,)) + message.encode(errors="replace")


def split_status(answer: bytes) -> tuple[int, bytes]:
    """``(status, rest)`` of one answer of a batch."""
    if not answer:
        raise CorruptStateError("empty answer in a batch")
    return answer[0], answer[1:]
