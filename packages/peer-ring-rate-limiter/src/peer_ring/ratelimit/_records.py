"""Entry records straight from and into the store's packed tuples (replication's codec).

Every replicated decision is encoded once on its owner and decoded and merged once on the
other replica. Through :func:`~peer_ring.ratelimit._wire.encode_entry` and
:func:`~peer_ring.ratelimit._wire.decode_entry` each of them built an
:class:`~peer_ring.ratelimit._wire.Entry` and a state object only to take them apart again
(the store keeps ``(seq, expires, algorithm id, *fields)``, see
:mod:`~peer_ring.ratelimit._compact`). These functions read and write the same bytes from
and into that tuple directly, for the fixed-size states; a sliding-window log, and any
record the fast path does not accept, goes through the general codec, which raises its
precise :class:`~peer_ring.ratelimit.CorruptStateError`. The bytes and the decoded values
are the same as the general codec's (``tests/test_records.py``).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable

from peer_ring.ratelimit._compact import TOMBSTONE, Packed, pack, unpack
from peer_ring.ratelimit._state import STATE_VERSION
from peer_ring.ratelimit._wire import WIRE_VERSION, decode_entry, encode_entry

# The record header of encode_entry: version, seq, expires (offset from now), key length.
_ENTRY = struct.Struct(">BQdH")
# State bodies after their two-byte header (version, algorithm id), as in ``_state``.
_DD = struct.Struct(">dd")
_QD = struct.Struct(">qd")
_DQ = struct.Struct(">dq")
_DQQ = struct.Struct(">dqq")

_TOKEN, _LEAKY, _GCRA, _FIXED, _LOG, _COUNTER = 1, 2, 3, 4, 5, 6
_HEAD = {a: bytes((STATE_VERSION, a)) for a in (_TOKEN, _LEAKY, _GCRA, _FIXED, _COUNTER)}
_isfinite = math.isfinite


def encode_packed(key: bytes, p: Packed, now: float) -> bytes:
    """``encode_entry(key, unpack(p), now)``, without building the entry."""
    algo = p[2]
    head = _ENTRY.pack(WIRE_VERSION, p[0], p[1] - now, len(key)) + key
    if algo == _FIXED:
        return head + _HEAD[_FIXED] + _DQ.pack(p[3] - now, p[4])
    if algo == TOMBSTONE:
        return head
    if algo == _TOKEN:
        return head + _HEAD[_TOKEN] + _DD.pack(p[3], p[4] - now)
    if algo == _LEAKY:
        return head + _HEAD[_LEAKY] + _QD.pack(p[3], p[4] - now)
    if algo == _GCRA:
        return head + _HEAD[_GCRA] + _DD.pack(p[3] - now, p[4])
    if algo == _COUNTER:
        return head + _HEAD[_COUNTER] + _DQQ.pack(p[3] - now, p[4], p[5])
    return encode_entry(key, unpack(p), now)  # a sliding-window log


def _fixed(seq: int, exp: float, body: bytes, now: float) -> Packed | None:
    start, count = _DQ.unpack_from(body, 2)
    return (seq, exp, _FIXED, start + now, count) if _isfinite(start) else None


def _token(seq: int, exp: float, body: bytes, now: float) -> Packed | None:
    level, last = _DD.unpack_from(body, 2)
    if not (_isfinite(level) and _isfinite(last)):
        return None
    return (seq, exp, _TOKEN, level, last + now)


def _leaky(seq: int, exp: float, body: bytes, now: float) -> Packed | None:
    level, last = _QD.unpack_from(body, 2)
    return (seq, exp, _LEAKY, level, last + now) if _isfinite(last) else None


def _gcra(seq: int, exp: float, body: bytes, now: float) -> Packed | None:
    tat, interval = _DD.unpack_from(body, 2)
    if not (_isfinite(tat) and _isfinite(interval)) or interval <= 0:
        return None
    return (seq, exp, _GCRA, tat + now, interval)


def _counter(seq: int, exp: float, body: bytes, now: float) -> Packed | None:
    start, previous, current = _DQQ.unpack_from(body, 2)
    if not _isfinite(start):
        return None
    return (seq, exp, _COUNTER, start + now, previous, current)


#: Body length (header included) and reader of each fixed-size state, by algorithm id.
_FAST: dict[int, tuple[int, Callable[[int, float, bytes, float], Packed | None]]] = {
    _FIXED: (2 + _DQ.size, _fixed),
    _TOKEN: (2 + _DD.size, _token),
    _LEAKY: (2 + _QD.size, _leaky),
    _GCRA: (2 + _DD.size, _gcra),
    _COUNTER: (2 + _DQQ.size, _counter),
}


def decode_packed(data: bytes, now: float) -> tuple[bytes, Packed]:
    """``(key, pack(entry))`` of ``decode_entry(data, now)``, without building the entry;
    raises :class:`~peer_ring.ratelimit.CorruptStateError` as it does."""
    if type(data) is bytes and len(data) >= _ENTRY.size:
        version, seq, expires, klen = _ENTRY.unpack_from(data)
        start = _ENTRY.size + klen
        if version == WIRE_VERSION and _isfinite(expires) and len(data) > start + 1:
            fast = _FAST.get(data[start + 1])
            if fast is not None and data[start] == STATE_VERSION:
                body = data[start:]
                if len(body) == fast[0]:
                    packed = fast[1](seq, expires + now, body, now)
                    if packed is not None:
                        return data[_ENTRY.size : start], packed
    key, entry = decode_entry(data, now)  # tombstones, logs, and every error
    return key, pack(entry)
