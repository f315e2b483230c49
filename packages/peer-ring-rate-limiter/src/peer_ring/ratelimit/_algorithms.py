"""The six algorithms as pure functions ``(state, limit, cost, now) -> (state, Decision)``.

In the manner of Gubernator's ``algorithms.go``, each function is the whole decision for one
key: no I/O, no clock of its own (``now`` is seconds on the deciding node's clock), no
shared state. Common rules:

- ``cost > 0`` is a hit; it is admitted only if all of it fits, and a rejected hit consumes
  nothing (the input state is returned unchanged, as the same object).
- ``cost == 0`` is a peek: nothing changes; ``allowed`` says whether a hit of cost 1 would be
  admitted (through :func:`decide`, a refused peek also has that hit's ``retry_after``).
- ``cost < 0`` is a refund of ``-cost`` hits; it is always allowed and never brings the key
  above its initial, unused state.
- The limit is read on every call, so a changed limit takes effect on the key's existing
  state without resetting it (a bucket keeps its level, a window keeps its count). Only a
  changed *algorithm* starts the key afresh: the states are not comparable.
- ``None`` is the state of a key never seen (or expired); a function returns ``None`` when
  a peek or a denied hit leaves an unknown key unknown.

Time going backwards (``now`` before a stored time) is treated as no time passing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from peer_ring.ratelimit._decision import Decision
from peer_ring.ratelimit._limit import Algorithm, Limit
from peer_ring.ratelimit._state import (
    FixedWindowState,
    GCRAState,
    LeakyBucketState,
    SlidingCounterState,
    SlidingLogState,
    State,
    TokenBucketState,
    algorithm_of,
)

# Slack for float comparisons: levels are sums of integers minus elapsed x rate.
_EPS = 1e-9


def _floor(x: float) -> int:
    return max(0, math.floor(x + _EPS))


def token_bucket(
    state: TokenBucketState | None, limit: Limit, cost: int, now: float, force: bool = False
) -> tuple[TokenBucketState | None, Decision]:
    """Token bucket: ``capacity`` tokens, refilled continuously at ``limit / period``.

    Over any interval of ``d`` seconds it admits at most ``capacity + rate * d`` hits.
    """
    cap, rate = limit.capacity, limit.rate
    if state is None:
        level, last = 0.0, now
    else:
        elapsed = max(0.0, now - state.last)
        level, last = max(0.0, state.level - elapsed * rate), max(now, state.last)
    if cost < 0:
        level = max(0.0, level + cost)
        new: TokenBucketState | None = TokenBucketState(level, last)
        allowed = True
    elif cost == 0:
        new, allowed = state, level + 1 <= cap + _EPS
    elif force or level + cost <= cap + _EPS:
        level += cost
        new, allowed = TokenBucketState(level, last), True
    else:
        retry = math.inf if cost > cap else (level + cost - cap) / rate
        return state, Decision(False, limit.limit, _floor(cap - level), level / rate, retry)
    return new, Decision(allowed, limit.limit, _floor(cap - level), max(0.0, level / rate))


def leaky_bucket(
    state: LeakyBucketState | None, limit: Limit, cost: int, now: float, force: bool = False
) -> tuple[LeakyBucketState | None, Decision]:
    """Leaky bucket (as a meter): hits fill a bucket of ``capacity`` whole units, and one
    unit leaks out every ``period / limit`` seconds.

    The continuous-refill token bucket's discrete twin: the level is always a whole number,
    and leaks happen at fixed ticks from the first hit into an empty bucket, as in Gubernator.
    Over any interval of ``d`` seconds it admits at most ``capacity + rate * d + 1`` hits.
    """
    cap = limit.capacity
    interval = limit.period / limit.limit
    if state is None or state.level <= 0:
        level, last = 0, now
    else:
        level, last = state.level, state.last
        if now > last:
            leaked = math.floor((now - last) / interval + _EPS)
            if leaked >= level:
                level, last = 0, now
            elif leaked > 0:
                level, last = level - leaked, last + leaked * interval
    since = max(0.0, now - last)
    drain = max(0.0, level * interval - since)
    if cost < 0:
        level = max(0, level + cost)
        new: LeakyBucketState | None = LeakyBucketState(level, last if level else now)
        drain = max(0.0, level * interval - since) if level else 0.0
        return new, Decision(True, limit.limit, max(0, cap - level), drain)
    if cost == 0:
        return state, Decision(level + 1 <= cap, limit.limit, max(0, cap - level), drain)
    if not force and level + cost > cap:
        retry = math.inf if cost > cap else (level + cost - cap) * interval - since
        return state, Decision(False, limit.limit, max(0, cap - level), drain, max(0.0, retry))
    level += cost
    drain = max(0.0, level * interval - since)
    return LeakyBucketState(level, last), Decision(True, limit.limit, max(0, cap - level), drain)


def gcra(
    state: GCRAState | None, limit: Limit, cost: int, now: float, force: bool = False
) -> tuple[GCRAState | None, Decision]:
    """Generic cell rate algorithm: one timestamp (the theoretical arrival time) per key.

    Equivalent to the token bucket (same bound: ``capacity + rate * d`` over ``d``
    seconds) with a smaller state. A changed rate rescales the tokens in use.
    """
    interval = limit.period / limit.limit
    tau = limit.capacity * interval
    if state is None:
        tat = now
    elif state.interval != interval:
        used = max(0.0, state.tat - now) / state.interval
        tat = now + used * interval
    else:
        tat = max(state.tat, now)
    tat = max(tat, now)

    def remaining(t: float) -> int:
        return _floor((tau - (t - now)) / interval)

    if cost < 0:
        tat = max(now, tat + cost * interval)
        return GCRAState(tat, interval), Decision(True, limit.limit, remaining(tat), tat - now)
    if cost == 0:
        allowed = tat + interval - tau <= now + _EPS
        return state, Decision(allowed, limit.limit, remaining(tat), tat - now)
    new_tat = tat + cost * interval
    allow_at = new_tat - tau
    if not force and allow_at > now + _EPS * interval:
        retry = math.inf if cost > limit.capacity else allow_at - now
        return state, Decision(False, limit.limit, remaining(tat), tat - now, retry)
    return GCRAState(new_tat, interval), Decision(
        True, limit.limit, remaining(new_tat), new_tat - now
    )


def fixed_window(
    state: FixedWindowState | None, limit: Limit, cost: int, now: float, force: bool = False
) -> tuple[FixedWindowState | None, Decision]:
    """Fixed window: at most ``limit`` hits per window of ``period`` seconds.

    A window starts with the first hit after the previous one ended (on the owner's clock,
    so nodes need no aligned clocks). Two adjacent windows may admit ``2 * limit`` hits
    within one period around their boundary.
    """
    if state is None or now >= state.start + limit.period or now < state.start:
        start, count, fresh = now, 0, True
    else:
        start, count, fresh = state.start, state.count, False
    left = start + limit.period - now
    if cost < 0:
        if fresh:
            return state, Decision(True, limit.limit, limit.limit, 0.0)
        count = max(0, count + cost)
        return FixedWindowState(start, count), Decision(
            True, limit.limit, max(0, limit.limit - count), left
        )
    if cost == 0:
        reset = 0.0 if fresh else left
        return state, Decision(
            count + 1 <= limit.limit, limit.limit, max(0, limit.limit - count), reset
        )
    if not force and count + cost > limit.limit:
        retry = math.inf if cost > limit.limit else left
        return state, Decision(False, limit.limit, max(0, limit.limit - count), left, retry)
    count += cost
    return FixedWindowState(start, count), Decision(
        True, limit.limit, max(0, limit.limit - count), left
    )


def sliding_window_log(
    state: SlidingLogState | None, limit: Limit, cost: int, now: float, force: bool = False
) -> tuple[SlidingLogState | None, Decision]:
    """Sliding window log: exact; any ``period``-long interval admits at most ``limit``.

    Keeps one ``(time, cost)`` entry per admitted hit of the last period (hits at the same
    instant share one entry), hence the :data:`~peer_ring.ratelimit.MAX_LOG_LIMIT` cap.
    """
    horizon = now - limit.period
    entries = [] if state is None else [e for e in state.entries if e[0] > horizon]
    used = sum(c for _, c in entries)

    def reset_after(es: list[tuple[float, int]]) -> float:
        return max(0.0, es[-1][0] + limit.period - now) if es else 0.0

    if cost < 0:
        refund = -cost
        while refund and entries:
            t, c = entries.pop()
            if c > refund:
                entries.append((t, c - refund))
                refund = 0
            else:
                refund -= c
        used = sum(c for _, c in entries)
        new = SlidingLogState(tuple(entries)) if entries else None
        return new, Decision(True, limit.limit, max(0, limit.limit - used), reset_after(entries))
    if cost == 0:
        allowed = used + 1 <= limit.limit
        return state, Decision(
            allowed, limit.limit, max(0, limit.limit - used), reset_after(entries)
        )
    if not force and used + cost > limit.limit:
        retry = math.inf
        if cost <= limit.limit:
            freed = 0
            for t, c in entries:
                freed += c
                if used - freed + cost <= limit.limit:
                    # Still inside the window now (t > now - period), so strictly later,
                    # even when the float difference rounds to 0.
                    retry = max(1e-9, t + limit.period - now)
                    break
        return state, Decision(
            False, limit.limit, max(0, limit.limit - used), reset_after(entries), retry
        )
    if entries and entries[-1][0] >= now:
        t, c = entries.pop()
        entries.append((t, c + cost))
    else:
        entries.append((now, cost))
    used += cost
    return SlidingLogState(tuple(entries)), Decision(
        True, limit.limit, max(0, limit.limit - used), reset_after(entries)
    )


def sliding_window_counter(
    state: SlidingCounterState | None, limit: Limit, cost: int, now: float, force: bool = False
) -> tuple[SlidingCounterState | None, Decision]:
    """Sliding window counter: the previous window's count, weighted by how much of it still
    overlaps the sliding period, plus the current window's count, is at most ``limit``.

    Constant-size approximation of the log: each fixed window admits at most ``limit``, and
    any ``period``-long interval at most ``2 * limit`` (exactly ``limit`` when traffic is
    even). Windows start at the key's first hit, on the owner's clock.
    """
    p = limit.period
    if state is None or now < state.start:
        start, prev, cur = now, 0, 0
    else:
        start, prev, cur = state.start, state.previous, state.current
        if now >= start + p:
            # Windows elapsed, such that start + k*p <= now < start + (k+1)*p *as computed*
            # (the division alone can round either way at a boundary).
            k = max(1, math.floor((now - start) / p))
            if start + (k + 1) * p <= now:
                k += 1
            elif k > 1 and start + k * p > now:
                k -= 1
            prev = cur if k == 1 else 0
            cur = 0
            start += k * p
    frac = (now - start) / p
    est = prev * (1.0 - frac) + cur
    until_end = start + p - now
    reset = until_end + p if cur > 0 else (until_end if prev > 0 else 0.0)
    if cost < 0:
        cur = max(0, cur + cost)
        if cur == 0 and prev == 0:
            return None, Decision(True, limit.limit, limit.limit, 0.0)
        est = prev * (1.0 - frac) + cur
        reset = until_end + p if cur > 0 else until_end
        return SlidingCounterState(start, prev, cur), Decision(
            True, limit.limit, _floor(limit.limit - est), reset
        )
    if cost == 0:
        return state, Decision(
            est + 1 <= limit.limit + _EPS, limit.limit, _floor(limit.limit - est), reset
        )
    if not force and est + cost > limit.limit + _EPS:
        return state, Decision(
            False,
            limit.limit,
            _floor(limit.limit - est),
            reset,
            _counter_retry(limit, prev, cur, cost, frac, until_end),
        )
    cur += cost
    est += cost
    return SlidingCounterState(start, prev, cur), Decision(
        True, limit.limit, _floor(limit.limit - est), until_end + p
    )


def _counter_retry(
    limit: Limit, prev: int, cur: int, cost: int, frac: float, until_end: float
) -> float:
    """Seconds until ``prev * (1 - f) + cur + cost <= limit`` holds, now or in a later window."""
    n, p = limit.limit, limit.period
    if cost > n:
        return math.inf
    if cur + cost <= n and prev > 0:
        f = 1.0 - (n - cur - cost) / prev
        return max(0.0, (f - frac) * p)
    # Next window: the current count becomes the previous one.
    if cur > 0 and cost <= n:
        f = max(0.0, 1.0 - (n - cost) / cur)
        return until_end + f * p
    return until_end


_FUNCTIONS: dict[Algorithm, Callable[..., tuple[Any, Decision]]] = {
    Algorithm.TOKEN_BUCKET: token_bucket,
    Algorithm.LEAKY_BUCKET: leaky_bucket,
    Algorithm.GCRA: gcra,
    Algorithm.FIXED_WINDOW: fixed_window,
    Algorithm.SLIDING_WINDOW_LOG: sliding_window_log,
    Algorithm.SLIDING_WINDOW_COUNTER: sliding_window_counter,
}

_BY_NAME = {a._name_: fn for a, fn in _FUNCTIONS.items()}


def decide(
    state: State | None, limit: Limit, cost: int, now: float, *, force: bool = False
) -> tuple[State | None, Decision]:
    """Run ``limit.algorithm`` on ``state`` (a state of another algorithm starts afresh).

    ``force=True`` admits a positive cost even over the limit (the state records it): the
    owner uses it for hits other nodes already admitted in global mode.
    """
    algo = limit.algorithm
    if state is not None and algorithm_of(state) is not algo:
        state = None
    # Keyed by name: an Enum member's __hash__ is Python code, a str caches its hash.
    fn = _BY_NAME[algo._name_]
    new, decision = fn(state, limit, cost, now, force)
    if cost == 0 and not decision.allowed:
        # A peek that would be refused says when a hit of cost 1 would pass.
        retry = fn(state, limit, 1, now, False)[1].retry_after
        decision = Decision(False, decision.limit, decision.remaining, decision.reset_after, retry)
    return new, decision


def expires_at(state: State | None, limit: Limit, now: float) -> float:
    """The time from which ``state`` is equivalent to no state at all (safe to forget)."""
    if state is None:
        return now
    if isinstance(state, TokenBucketState):
        return state.last + state.level / limit.rate
    if isinstance(state, LeakyBucketState):
        return state.last + state.level * limit.period / limit.limit
    if isinstance(state, GCRAState):
        return state.tat
    if isinstance(state, FixedWindowState):
        return state.start + limit.period
    if isinstance(state, SlidingLogState):
        return state.entries[-1][0] + limit.period if state.entries else now
    return state.start + 2 * limit.period
