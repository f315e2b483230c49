"""Per-algorithm state and its compact, versioned binary record.

Times in a state object are seconds on *one node's* clock (the owner's monotonic clock).
They never leave the node as such: :func:`encode_state` writes every time as an offset from
an ``anchor`` (the encoding node's "now"), and :func:`decode_state` turns the offsets back
into times on the decoding node's clock with *its* "now" as the anchor. A record therefore
carries durations ("the window started 12.5 s ago"), never wall-clock instants, and two
nodes whose clocks differ by any amount agree on what it means. The time a record spends in
flight is lost, which only ever makes the limiter stricter (a bucket refills a few
milliseconds later), never looser.

Record layout (big-endian): ``u8 version (1) | u8 algorithm id | algorithm fields``:

=====================  ==========================================================
algorithm              fields
=====================  ==========================================================
token bucket           ``f64 level`` (tokens in use), ``f64 last`` (offset)
leaky bucket           ``i64 level`` (units in the bucket), ``f64 last`` (offset)
GCRA                   ``f64 tat`` (offset), ``f64 emission interval`` (seconds)
fixed window           ``f64 start`` (offset), ``i64 count``
sliding window log     ``u32 n``, then ``n`` x (``f64 time`` (offset), ``u32 cost``)
sliding window counter ``f64 start`` (offset), ``i64 previous``, ``i64 current``
=====================  ==========================================================
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass

from peer_ring.ratelimit._errors import CorruptStateError, UnknownAlgorithmError
from peer_ring.ratelimit._limit import Algorithm

#: Version byte of the state record; bump it when a layout changes.
STATE_VERSION = 1

_HEADER = struct.Struct(">BB")
_DD = struct.Struct(">dd")
_QD = struct.Struct(">qd")
_DQ = struct.Struct(">dq")
_DQQ = struct.Struct(">dqq")
_U32 = struct.Struct(">I")
_ENTRY = struct.Struct(">dI")


@dataclass(frozen=True, slots=True)
class TokenBucketState:
    """Tokens in use (``level``, drained continuously) as of ``last``."""

    level: float
    last: float


@dataclass(frozen=True, slots=True)
class LeakyBucketState:
    """Whole units in the bucket; one leaks every ``period / limit`` seconds after ``last``."""

    level: int
    last: float


@dataclass(frozen=True, slots=True)
class GCRAState:
    """Theoretical arrival time and the emission interval it was computed with."""

    tat: float
    interval: float


@dataclass(frozen=True, slots=True)
class FixedWindowState:
    """Hits counted in the window that started at ``start`` (the window's first hit)."""

    start: float
    count: int


@dataclass(frozen=True, slots=True)
class SlidingLogState:
    """Admitted hits of the last period, oldest first, as ``(time, cost)``."""

    entries: tuple[tuple[float, int], ...]


@dataclass(frozen=True, slots=True)
class SlidingCounterState:
    """Counts of the current window (from ``start``) and of the one before it."""

    start: float
    previous: int
    current: int


State = (
    TokenBucketState
    | LeakyBucketState
    | GCRAState
    | FixedWindowState
    | SlidingLogState
    | SlidingCounterState
)

_ALGORITHM_OF: dict[type, Algorithm] = {
    TokenBucketState: Algorithm.TOKEN_BUCKET,
    LeakyBucketState: Algorithm.LEAKY_BUCKET,
    GCRAState: Algorithm.GCRA,
    FixedWindowState: Algorithm.FIXED_WINDOW,
    SlidingLogState: Algorithm.SLIDING_WINDOW_LOG,
    SlidingCounterState: Algorithm.SLIDING_WINDOW_COUNTER,
}


#: By wire id: a dict lookup (``Algorithm(id)`` runs Enum's Python-level lookup).
_ALGORITHM_BY_ID: dict[int, Algorithm] = {a.value: a for a in Algorithm}


def algorithm_of(state: State) -> Algorithm:
    """The algorithm a state belongs to."""
    return _ALGORITHM_OF[type(state)]


#: The record header of each state type (version, algorithm id), packed once.
_HEADERS: dict[type, bytes] = {
    t: _HEADER.pack(STATE_VERSION, a.value) for t, a in _ALGORITHM_OF.items()
}


def encode_state(state: State, anchor: float) -> bytes:
    """Encode ``state`` with its times as offsets from ``anchor`` (the encoder's now)."""
    head = _HEADERS[type(state)]
    if isinstance(state, TokenBucketState):
        return head + _DD.pack(state.level, state.last - anchor)
    if isinstance(state, LeakyBucketState):
        return head + _QD.pack(state.level, state.last - anchor)
    if isinstance(state, GCRAState):
        return head + _DD.pack(state.tat - anchor, state.interval)
    if isinstance(state, FixedWindowState):
        return head + _DQ.pack(state.start - anchor, state.count)
    if isinstance(state, SlidingCounterState):
        return head + _DQQ.pack(state.start - anchor, state.previous, state.current)
    parts = [head, _U32.pack(len(state.entries))]
    parts.extend(_ENTRY.pack(t - anchor, c) for t, c in state.entries)
    return b"".join(parts)


def _token(level: float, last: float, anchor: float) -> State | None:
    if not (math.isfinite(level) and math.isfinite(last)):
        return None
    return TokenBucketState(level, last + anchor)


def _leaky(level: int, last: float, anchor: float) -> State | None:
    return LeakyBucketState(level, last + anchor) if math.isfinite(last) else None


def _gcra(tat: float, interval: float, anchor: float) -> State | None:
    if not (math.isfinite(tat) and math.isfinite(interval)) or interval <= 0:
        return None
    return GCRAState(tat + anchor, interval)


def _fixed(start: float, count: int, anchor: float) -> State | None:
    return FixedWindowState(start + anchor, count) if math.isfinite(start) else None


def _counter(start: float, previous: int, current: int, anchor: float) -> State | None:
    return SlidingCounterState(start + anchor, previous, current) if math.isfinite(start) else None


#: Fixed-size records by algorithm id: ``(body layout, constructor)``; a constructor
#: returns None for a record the full path must judge (it raises the precise error).
_FAST: dict[int, tuple[struct.Struct, Callable[..., State | None]]] = {
    Algorithm.TOKEN_BUCKET.value: (_DD, _token),
    Algorithm.LEAKY_BUCKET.value: (_QD, _leaky),
    Algorithm.GCRA.value: (_DD, _gcra),
    Algorithm.FIXED_WINDOW.value: (_DQ, _fixed),
    Algorithm.SLIDING_WINDOW_COUNTER.value: (_DQQ, _counter),
}


def decode_state(data: bytes, anchor: float) -> State:
    """Decode a record written by :func:`encode_state`, times relative to ``anchor``.

    Raises:
        CorruptStateError: wrong version, unknown algorithm, wrong length or non-finite
            numbers.
    """
    # Fast path: every replicated decision is decoded on its replica, and the general
    # path below (memoryview, closure, per-field checks) cost about 4x this.
    if len(data) > 2 and data[0] == STATE_VERSION:
        fast = _FAST.get(data[1])
        if fast is not None and len(data) == 2 + fast[0].size:
            state = fast[1](*fast[0].unpack_from(data, 2), anchor)
            if state is not None:
                return state
    try:
        version, algo_id = _HEADER.unpack_from(data)
    except struct.error as exc:
        raise CorruptStateError(f"state record too short ({len(data)} bytes)") from exc
    if version != STATE_VERSION:
        raise CorruptStateError(f"unsupported state record version {version}")
    algo = _ALGORITHM_BY_ID.get(algo_id)
    if algo is None:
        try:
            Algorithm.parse(algo_id)  # for its error message
        except UnknownAlgorithmError as exc:
            raise CorruptStateError(str(exc)) from exc
        raise CorruptStateError(f"unknown algorithm id {algo_id}")
    body = memoryview(data)[_HEADER.size :]
    try:
        state = _decode_body(algo, body, anchor)
    except struct.error as exc:
        raise CorruptStateError(f"malformed {algo.name.lower()} state: {exc}") from exc
    _check_finite(state)
    return state


def _decode_body(algo: Algorithm, body: memoryview, anchor: float) -> State:
    def exact(s: struct.Struct) -> tuple[float | int, ...]:
        if len(body) != s.size:
            raise struct.error(f"expected {s.size} bytes, got {len(body)}")
        return s.unpack(body)

    if algo is Algorithm.TOKEN_BUCKET:
        level, last = exact(_DD)
        return TokenBucketState(float(level), float(last) + anchor)
    if algo is Algorithm.LEAKY_BUCKET:
        ilevel, last = exact(_QD)
        return LeakyBucketState(int(ilevel), float(last) + anchor)
    if algo is Algorithm.GCRA:
        tat, interval = exact(_DD)
        return GCRAState(float(tat) + anchor, float(interval))
    if algo is Algorithm.FIXED_WINDOW:
        start, count = exact(_DQ)
        return FixedWindowState(float(start) + anchor, int(count))
    if algo is Algorithm.SLIDING_WINDOW_COUNTER:
        start, prev, cur = exact(_DQQ)
        return SlidingCounterState(float(start) + anchor, int(prev), int(cur))
    (n,) = _U32.unpack_from(body)
    if len(body) != _U32.size + n * _ENTRY.size:
        raise struct.error(f"log of {n} entries needs {_U32.size + n * _ENTRY.size} bytes")
    entries = tuple((t + anchor, c) for t, c in _ENTRY.iter_unpack(body[_U32.size :]))
    return SlidingLogState(entries)


def _check_finite(state: State) -> None:
    if isinstance(state, SlidingLogState):
        values: list[float] = [t for t, _ in state.entries]
    else:
        values = [float(getattr(state, f)) for f in state.__slots__]
    if not all(math.isfinite(v) for v in values):
        raise CorruptStateError("state record holds a non-finite number")
    if isinstance(state, GCRAState) and state.interval <= 0:
        raise CorruptStateError("GCRA state with a non-positive emission interval")
