"""Property tests of the algorithms on a fake clock (hypothesis).

Each algorithm is checked against its own definition of "never more than the limit":

- token bucket, GCRA: any interval of ``d`` seconds admits at most ``capacity + rate * d``;
- leaky bucket: at most ``capacity + rate * d + 1`` (whole-unit leaks);
- sliding window log: any ``period``-long interval admits at most ``limit``;
- fixed window: each window admits at most ``limit``;
- sliding window counter: each window at most ``limit``, any period at most ``2 * limit``.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from peer_ring.ratelimit import Algorithm, Limit, decide
from peer_ring.ratelimit._state import FixedWindowState, SlidingCounterState

limits = st.builds(
    Limit,
    limit=st.integers(1, 20),
    period=st.sampled_from([0.5, 1.0, 3.0, 10.0]),
    burst=st.none() | st.integers(1, 20),
    algorithm=st.sampled_from(list(Algorithm)),
)
steps = st.lists(
    st.tuples(st.sampled_from([0.0, 0.0, 0.01, 0.1, 0.3, 1.0, 2.5]), st.integers(0, 4)),
    min_size=1,
    max_size=120,
)


def simulate(
    limit: Limit, seq: list[tuple[float, int]]
) -> tuple[list[tuple[float, int]], set[float]]:
    """Admitted (time, cost) and the window starts the window algorithms used."""
    now, state = 0.0, None
    admitted, starts = [], set()
    for dt, cost in seq:
        now += dt
        new, d = decide(state, limit, cost, now)
        if cost > 0:
            assert d.allowed == (new is not state)
            if d.allowed:
                admitted.append((now, cost))
                assert d.retry_after == 0
            else:
                assert d.retry_after > 0
        assert 0 <= d.remaining <= (limit.capacity if _is_bucket(limit) else limit.limit)
        assert d.reset_after >= 0
        state = new
        if isinstance(state, FixedWindowState | SlidingCounterState):
            starts.add(state.start)
    return admitted, starts


def _is_bucket(limit: Limit) -> bool:
    return limit.algorithm in (Algorithm.TOKEN_BUCKET, Algorithm.LEAKY_BUCKET, Algorithm.GCRA)


def in_range(admitted: list[tuple[float, int]], lo: float, hi: float, closed: bool) -> int:
    return sum(c for t, c in admitted if lo <= t and (t <= hi if closed else t < hi))


@settings(max_examples=400, deadline=None)
@given(limits, steps)
def test_never_admits_more_than_the_limit(limit: Limit, seq: list[tuple[float, int]]) -> None:
    admitted, starts = simulate(limit, seq)
    times = sorted({t for t, _ in admitted})
    algo = limit.algorithm
    if _is_bucket(limit):
        slack = 1 if algo is Algorithm.LEAKY_BUCKET else 1e-6
        for i, a in enumerate(times):
            for b in times[i:]:
                assert (
                    in_range(admitted, a, b, True) <= limit.capacity + limit.rate * (b - a) + slack
                )
    elif algo is Algorithm.SLIDING_WINDOW_LOG:
        for t in times:
            assert sum(c for s, c in admitted if t - limit.period < s <= t) <= limit.limit
    else:
        for s in starts:
            assert in_range(admitted, s, s + limit.period, False) <= limit.limit
        if algo is Algorithm.SLIDING_WINDOW_COUNTER:
            for t in times:
                assert sum(c for s, c in admitted if t - limit.period < s <= t) <= 2 * limit.limit
        else:
            # Fixed windows: every admission lies in a window that started at a hit.
            assert all(any(s <= t < s + limit.period for s in starts) for t in times)


@settings(max_examples=300, deadline=None)
@given(limits, steps, st.lists(st.integers(-6, -1), max_size=5))
def test_refunds_never_exceed_the_initial_allowance(
    limit: Limit, seq: list[tuple[float, int]], refunds: list[int]
) -> None:
    now, state = 0.0, None
    for dt, cost in seq:
        now += dt
        state, _ = decide(state, limit, cost, now)
    for r in refunds:
        state, d = decide(state, limit, r, now)
        assert d.allowed
    # However many refunds, no more than a fresh key's allowance is admitted at once.
    fresh = limit.capacity if _is_bucket(limit) else limit.limit
    admitted = 0
    for _ in range(fresh + 2):
        state, d = decide(state, limit, 1, now)
        admitted += d.allowed
    assert admitted <= fresh


@settings(max_examples=300, deadline=None)
@given(limits, steps)
def test_peeks_are_pure_and_agree_with_a_hit(limit: Limit, seq: list[tuple[float, int]]) -> None:
    now, state = 0.0, None
    for dt, cost in seq:
        now += dt
        same, peek = decide(state, limit, 0, now)
        assert same is state
        _, hit = decide(state, limit, 1, now)
        assert peek.allowed == hit.allowed
        state, _ = decide(state, limit, cost, now)
