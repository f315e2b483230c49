"""A key's entry as the store holds it: one plain tuple of numbers, which the collector
does not track.

Every key a node holds used to cost the garbage collector two tracked objects (its
:class:`~peer_ring.ratelimit._wire.Entry` and its state, slotted dataclasses), so a node
holding 200,000 keys had full collections of over a second under load. CPython stops
tracking an *exact* tuple whose items are all untracked (numbers, or such tuples) at the
first collection it survives; tuple subclasses (``NamedTuple``) stay tracked. The store
therefore keeps ``(seq, expires, algorithm id, *state fields)`` and builds the
:class:`Entry` and state objects on the way out (they live for one decision and are freed
by reference counting, so they never reach an old generation).

Layout, by algorithm id (the wire ids of :class:`~peer_ring.ratelimit.Algorithm`):

======  =====================================================
id      fields after ``seq, expires, id``
======  =====================================================
0       none: a tombstone (a reset key, state None)
1       token bucket: ``level, last``
2       leaky bucket: ``level, last``
3       GCRA: ``tat, interval``
4       fixed window: ``start, count``
5       sliding window log: ``entries`` (a tuple of ``(time, cost)`` tuples)
6       sliding window counter: ``start, previous, current``
======  =====================================================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from peer_ring.ratelimit._state import (
    FixedWindowState,
    GCRAState,
    LeakyBucketState,
    SlidingCounterState,
    SlidingLogState,
    State,
    TokenBucketState,
)
from peer_ring.ratelimit._wire import Entry

#: A stored entry: ``(seq, expires, algorithm id, *fields)``, see the module's table.
Packed = tuple[Any, ...]

#: Positions in a :data:`Packed` entry, for readers that need no state.
SEQ = 0
EXPIRES = 1
ALGORITHM = 2
TOMBSTONE = 0


def _token(seq: int, expires: float, s: Any) -> Packed:
    return (seq, expires, 1, s.level, s.last)


def _leaky(seq: int, expires: float, s: Any) -> Packed:
    return (seq, expires, 2, s.level, s.last)


def _gcra(seq: int, expires: float, s: Any) -> Packed:
    return (seq, expires, 3, s.tat, s.interval)


def _fixed(seq: int, expires: float, s: Any) -> Packed:
    return (seq, expires, 4, s.start, s.count)


def _log(seq: int, expires: float, s: Any) -> Packed:
    # The entries are already a tuple of (float, int) tuples (untracked in turn).
    return (seq, expires, 5, s.entries)


def _counter(seq: int, expires: float, s: Any) -> Packed:
    return (seq, expires, 6, s.start, s.previous, s.current)


_PACK: dict[type, Callable[[int, float, Any], Packed]] = {
    TokenBucketState: _token,
    LeakyBucketState: _leaky,
    GCRAState: _gcra,
    FixedWindowState: _fixed,
    SlidingLogState: _log,
    SlidingCounterState: _counter,
}

#: State constructors by algorithm id, taking the fields after ``seq, expires, id``.
_UNPACK: dict[int, Callable[..., State]] = {
    1: TokenBucketState,
    2: LeakyBucketState,
    3: GCRAState,
    4: FixedWindowState,
    5: SlidingLogState,
    6: SlidingCounterState,
}


def pack(entry: Entry) -> Packed:
    """The stored form of ``entry``."""
    state = entry.state
    if state is None:
        return (entry.seq, entry.expires, TOMBSTONE)
    return _PACK[type(state)](entry.seq, entry.expires, state)


def unpack(packed: Packed) -> Entry:
    """The :class:`Entry` (with its state object) of a stored entry."""
    algo = packed[ALGORITHM]
    if algo == TOMBSTONE:
        return Entry(packed[SEQ], None, packed[EXPIRES])
    return Entry(packed[SEQ], _UNPACK[algo](*packed[3:]), packed[EXPIRES])
