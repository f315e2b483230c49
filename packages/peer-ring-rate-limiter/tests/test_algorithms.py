"""Unit tests of the six algorithms and the Limit/Decision types (pure, no clock)."""

from __future__ import annotations

import math

import pytest

from peer_ring.ratelimit import (
    Algorithm,
    CorruptStateError,
    InvalidLimitError,
    Limit,
    UnknownAlgorithmError,
    decide,
    decode_state,
    encode_state,
)

ALL = list(Algorithm)


def run(limit: Limit, hits: list[tuple[float, int]]) -> list[bool]:
    state = None
    out = []
    for now, cost in hits:
        state, d = decide(state, limit, cost, now)
        out.append(d.allowed)
    return out


@pytest.mark.parametrize("algo", ALL, ids=lambda a: a.name.lower())
def test_admits_exactly_the_limit_at_one_instant(algo: Algorithm) -> None:
    limit = Limit(10, 60.0, algorithm=algo)
    assert run(limit, [(100.0, 1)] * 15) == [True] * 10 + [False] * 5


@pytest.mark.parametrize("algo", ALL, ids=lambda a: a.name.lower())
def test_rejected_hits_do_not_consume(algo: Algorithm) -> None:
    limit = Limit(10, 60.0, algorithm=algo)
    state, d = decide(None, limit, 7, 0.0)
    assert d.allowed and d.remaining == 3
    same, d = decide(state, limit, 4, 0.0)
    assert not d.allowed and same is state and d.remaining == 3 and d.retry_after > 0
    state, d = decide(state, limit, 3, 0.0)
    assert d.allowed and d.remaining == 0


@pytest.mark.parametrize("algo", ALL, ids=lambda a: a.name.lower())
def test_peek_changes_nothing(algo: Algorithm) -> None:
    limit = Limit(2, 10.0, algorithm=algo)
    assert decide(None, limit, 0, 0.0) == (None, decide(None, limit, 0, 0.0)[1])
    state, _ = decide(None, limit, 2, 0.0)
    same, d = decide(state, limit, 0, 0.0)
    assert same is state and not d.allowed and d.remaining == 0


@pytest.mark.parametrize("algo", ALL, ids=lambda a: a.name.lower())
def test_refund_gives_back_and_is_bounded(algo: Algorithm) -> None:
    limit = Limit(5, 10.0, algorithm=algo)
    state, _ = decide(None, limit, 5, 0.0)
    state, d = decide(state, limit, -2, 0.0)
    assert d.allowed and d.remaining == 2
    state, d = decide(state, limit, -100, 0.0)
    assert d.allowed and d.remaining == 5
    assert run_from(state, limit, [(0.0, 1)] * 6) == [True] * 5 + [False]


def run_from(state: object, limit: Limit, hits: list[tuple[float, int]]) -> list[bool]:
    out = []
    for now, cost in hits:
        state, d = decide(state, limit, cost, now)  # type: ignore[arg-type]
        out.append(d.allowed)
    return out


@pytest.mark.parametrize("algo", ALL, ids=lambda a: a.name.lower())
def test_cost_above_capacity_never_fits(algo: Algorithm) -> None:
    limit = Limit(5, 10.0, algorithm=algo)
    _, d = decide(None, limit, 6, 0.0)
    assert not d.allowed and math.isinf(d.retry_after) and d.retry_after_seconds is None


@pytest.mark.parametrize("algo", ALL, ids=lambda a: a.name.lower())
def test_retry_after_is_when_the_hit_fits(algo: Algorithm) -> None:
    limit = Limit(4, 8.0, algorithm=algo)
    state, _ = decide(None, limit, 4, 0.0)
    _, d = decide(state, limit, 1, 1.0)
    assert not d.allowed and 0 < d.retry_after < math.inf
    _, early = decide(state, limit, 1, 1.0 + d.retry_after - 0.01)
    _, late = decide(state, limit, 1, 1.0 + d.retry_after + 1e-6)
    assert not early.allowed and late.allowed


@pytest.mark.parametrize("algo", ALL, ids=lambda a: a.name.lower())
def test_state_is_forgotten_after_reset_after(algo: Algorithm) -> None:
    limit = Limit(3, 5.0, algorithm=algo)
    state, d = decide(None, limit, 3, 0.0)
    _, after = decide(state, limit, 3, d.reset_after + 1e-6)
    assert after.allowed


@pytest.mark.parametrize("algo", ALL, ids=lambda a: a.name.lower())
def test_raised_limit_keeps_usage(algo: Algorithm) -> None:
    state, _ = decide(None, Limit(10, 60.0, algorithm=algo), 8, 0.0)
    _, d = decide(state, Limit(20, 60.0, algorithm=algo), 0, 0.0)
    assert d.remaining == 12
    _, d = decide(state, Limit(5, 60.0, algorithm=algo), 1, 0.0)
    assert not d.allowed and d.remaining == 0


def test_changed_algorithm_starts_afresh() -> None:
    state, _ = decide(None, Limit(2, 60.0, algorithm="fixed_window"), 2, 0.0)
    _, d = decide(state, Limit(2, 60.0, algorithm="gcra"), 2, 0.0)
    assert d.allowed


def test_token_bucket_refills_continuously_with_burst() -> None:
    limit = Limit.per_second(100, burst=20)
    state, d = decide(None, limit, 20, 0.0)
    assert d.allowed and d.remaining == 0 and d.reset_after == pytest.approx(0.2)
    _, d = decide(state, limit, 5, 0.05)
    assert d.allowed and d.remaining == 0
    _, d = decide(state, limit, 6, 0.05)
    assert not d.allowed and d.retry_after == pytest.approx(0.01)


def test_leaky_bucket_leaks_whole_units() -> None:
    limit = Limit(10, 10.0, algorithm="leaky_bucket")  # one unit per second
    state, _ = decide(None, limit, 10, 0.0)
    _, d = decide(state, limit, 1, 0.99)
    assert not d.allowed and d.retry_after == pytest.approx(0.01)
    state, d = decide(state, limit, 2, 2.5)
    assert d.allowed and d.remaining == 0


def test_fixed_window_starts_at_first_hit() -> None:
    limit = Limit(2, 10.0, algorithm="fixed_window")
    assert run(limit, [(5.0, 1), (6.0, 1), (14.9, 1), (15.0, 1), (15.0, 1), (15.0, 1)]) == [
        True,
        True,
        False,
        True,
        True,
        False,
    ]


def test_sliding_log_counts_the_last_period_exactly() -> None:
    limit = Limit(2, 10.0, algorithm="sliding_window_log")
    assert run(limit, [(0.0, 1), (5.0, 1), (9.0, 1), (10.0, 1), (14.9, 1), (15.0, 1)]) == [
        True,
        True,
        False,
        True,
        False,
        True,
    ]


def test_sliding_counter_weights_the_previous_window() -> None:
    limit = Limit(10, 10.0, algorithm="sliding_window_counter")
    state, _ = decide(None, limit, 10, 0.0)
    # Half-way through the next window the previous 10 weigh 5.
    _, d = decide(state, limit, 5, 15.0)
    assert d.allowed
    _, d = decide(state, limit, 6, 15.0)
    assert not d.allowed and d.retry_after == pytest.approx(1.0)


def test_gcra_rescales_when_the_rate_changes() -> None:
    state, _ = decide(None, Limit(10, 10.0, algorithm="gcra"), 5, 0.0)
    _, d = decide(state, Limit(20, 10.0, algorithm="gcra"), 0, 0.0)
    assert d.remaining == 15 and d.reset_after == pytest.approx(2.5)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"limit": -1, "period": 1.0}, InvalidLimitError),
        ({"limit": 0, "period": 1.0}, InvalidLimitError),
        ({"limit": 1.5, "period": 1.0}, InvalidLimitError),
        ({"limit": 10, "period": 0}, InvalidLimitError),
        ({"limit": 10, "period": -3.0}, InvalidLimitError),
        ({"limit": 10, "period": math.inf}, InvalidLimitError),
        ({"limit": 10, "period": math.nan}, InvalidLimitError),
        ({"limit": 10, "period": 1.0, "burst": 0}, InvalidLimitError),
        ({"limit": 10, "period": 1.0, "algorithm": "nope"}, UnknownAlgorithmError),
        ({"limit": 10, "period": 1.0, "algorithm": 99}, UnknownAlgorithmError),
        ({"limit": 20_000, "period": 1.0, "algorithm": "sliding_window_log"}, InvalidLimitError),
    ],
)
def test_bad_limits_raise_typed_errors(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        Limit(**kwargs)  # type: ignore[arg-type]
    assert issubclass(error, ValueError)


def test_limit_constructors_and_label() -> None:
    limit = Limit.per_second(100, burst=20)
    assert (limit.limit, limit.period, limit.capacity, limit.rate) == (100, 1.0, 20, 100.0)
    assert Limit.per_minute(5).period == 60.0 and Limit.per_hour(5).period == 3600.0
    assert Limit.per_day(5, algorithm="GCRA").algorithm is Algorithm.GCRA
    assert Limit.per_minute(5).label == "5/60s" and Limit(1, 1, name="login").label == "login"


@pytest.mark.parametrize("algo", ALL, ids=lambda a: a.name.lower())
def test_records_carry_durations_not_clock_readings(algo: Algorithm) -> None:
    limit = Limit(10, 60.0, algorithm=algo)
    state, _ = decide(None, limit, 3, 1000.0)
    state, _ = decide(state, limit, 2, 1010.0)
    assert state is not None
    record = encode_state(state, anchor=1020.0)
    assert record[0] == 1 and record[1] == algo.value
    # Another node whose clock reads 5000 at the same instant sees the same key.
    moved = decode_state(record, anchor=5000.0)
    assert encode_state(moved, anchor=5000.0) == record
    for later in (0.0, 5.0, 45.0, 70.0):
        here = decide(state, limit, 1, 1020.0 + later)[1]
        there = decide(moved, limit, 1, 5000.0 + later)[1]
        assert here == there


@pytest.mark.parametrize(
    "record",
    [
        b"",
        b"\x01",
        b"\x02\x01" + bytes(16),
        b"\x01\x09" + bytes(16),
        b"\x01\x01" + bytes(15),
        b"\x01\x05\x00\x00\x00\x02" + bytes(12),
        b"\x01\x01" + b"\x7f\xf0" + bytes(14),
    ],
)
def test_corrupt_records_raise_typed_errors(record: bytes) -> None:
    with pytest.raises(CorruptStateError):
        decode_state(record, 0.0)


@pytest.mark.parametrize("algo", ALL, ids=lambda a: a.name.lower())
def test_forced_hits_are_recorded_over_the_limit(algo: Algorithm) -> None:
    limit = Limit(3, 60.0, algorithm=algo)
    state, _ = decide(None, limit, 3, 0.0)
    state, d = decide(state, limit, 2, 0.0, force=True)
    assert d.allowed and d.remaining == 0
    # A refund of 1 does not make room: 5 are recorded against a limit of 3.
    state, _ = decide(state, limit, -1, 0.0)
    assert not decide(state, limit, 1, 0.0)[1].allowed


def test_regression_float_boundaries_found_by_hypothesis() -> None:
    # Sliding log: an entry exactly one period old is still in the window, so a refused
    # hit's retry_after must be > 0 even though t + period - now rounds to 0.0.
    log = Limit(7, 0.5, algorithm="sliding_window_log")
    state, now = None, 0.0
    for dt, cost in [(0.1, 1), (0.1, 0), (0.3, 3), (0.1, 4)]:
        now += dt
        state, d = decide(state, log, cost, now)  # type: ignore[arg-type]
    assert d.allowed or d.retry_after > 0
    # Sliding counter: "now >= start + period" while (now - start) / period rounds below
    # 1 (or below 2): the windows must still advance, never reset in place.
    for limit, seq in [
        (
            Limit(1, 1.0, algorithm="sliding_window_counter"),
            [(0.01, 0), (1.0, 1), (1.0, 1), (0.0, 1)],
        ),
        (
            Limit(10, 0.5, algorithm="sliding_window_counter"),
            [(0.01, 0), (1.0, 1), (1.0, 2), (0.0, 1), (0.0, 4), (0.3, 4)],
        ),
    ]:
        state, now, at_end = None, 0.0, 0
        for dt, cost in seq:
            now += dt
            state, d = decide(state, limit, cost, now)  # type: ignore[arg-type]
            at_end = at_end + cost if d.allowed and now > 2.0 else at_end
        assert at_end <= limit.limit
