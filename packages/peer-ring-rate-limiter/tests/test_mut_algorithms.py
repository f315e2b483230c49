"""The bucket algorithms and ``expires_at`` pinned to exact states and decisions
(tools/mutation found them loose).

test_algorithms.py and the property tests check what is admitted; these pin every field of
the decision (``limit``, ``remaining``, ``reset_after``, ``retry_after``) and the stored
state for hits, peeks, denials and refunds, at the boundaries: a leak landing exactly on a
tick, a cost equal to the capacity, a refund to zero, a changed rate, time going backwards.
The values are worked out by hand in the comments.
"""

from __future__ import annotations

import math

import pytest

from peer_ring.ratelimit import Algorithm, Decision, Limit
from peer_ring.ratelimit._algorithms import (
    decide,
    expires_at,
    fixed_window,
    gcra,
    leaky_bucket,
    sliding_window_counter,
    sliding_window_log,
    token_bucket,
)
from peer_ring.ratelimit._state import (
    FixedWindowState,
    GCRAState,
    LeakyBucketState,
    SlidingCounterState,
    SlidingLogState,
    TokenBucketState,
)

# 4 hits per 8 s: one unit every 2 s (leaky bucket, GCRA); 0.5 token/s (token bucket).
LEAKY = Limit(4, 8.0, algorithm=Algorithm.LEAKY_BUCKET)
GCRA = Limit(4, 8.0, algorithm=Algorithm.GCRA)
TOKENS = Limit(4, 8.0, algorithm=Algorithm.TOKEN_BUCKET)


# ------------------------------------------------------------------------------ leaky bucket
def test_leaky_hits_fill_the_bucket_and_report_the_drain_time() -> None:
    state, d = leaky_bucket(None, LEAKY, 1, 10.0)
    assert (state, d) == (LeakyBucketState(1, 10.0), Decision(True, 4, 3, 2.0))
    # 1 s later nothing leaked (a unit takes 2 s): level 1 + 2; drain 3 * 2 - 1 s elapsed.
    state, d = leaky_bucket(state, LEAKY, 2, 11.0)
    assert (state, d) == (LeakyBucketState(3, 10.0), Decision(True, 4, 1, 5.0))


def test_leaky_peeks_change_nothing_and_report_the_same_fields() -> None:
    full = LeakyBucketState(3, 10.0)
    state, d = leaky_bucket(full, LEAKY, 0, 11.0)
    assert state is full and d == Decision(True, 4, 1, 5.0)
    state, d = leaky_bucket(LeakyBucketState(4, 10.0), LEAKY, 0, 11.0)
    assert d == Decision(False, 4, 0, 7.0)
    # Less than a second of drain left: 1 unit, 1.9 s after it entered.
    _, d = leaky_bucket(LeakyBucketState(1, 10.0), LEAKY, 0, 11.9)
    assert d.allowed and d.remaining == 3 and d.reset_after == pytest.approx(0.1)


def test_leaky_denials_say_when_to_retry_and_consume_nothing() -> None:
    full = LeakyBucketState(3, 10.0)
    state, d = leaky_bucket(full, LEAKY, 2, 11.0)
    # 1 unit too many: it leaks at 12 (1 s from now).
    assert state is full and d == Decision(False, 4, 1, 5.0, 1.0)
    state, d = leaky_bucket(full, LEAKY, 4, 11.0)  # cost == capacity: possible later
    assert state is full and d == Decision(False, 4, 1, 5.0, 5.0)
    _, d = leaky_bucket(full, LEAKY, 5, 11.0)  # over the capacity: never
    assert d == Decision(False, 4, 1, 5.0, math.inf)
    # Called directly, without force, a denial stays a denial.
    assert leaky_bucket(LeakyBucketState(4, 10.0), LEAKY, 1, 10.0)[1].allowed is False
    forced, d = leaky_bucket(LeakyBucketState(4, 10.0), LEAKY, 1, 10.0, True)
    assert forced == LeakyBucketState(5, 10.0) and d == Decision(True, 4, 0, 10.0)


def test_leaky_leaks_whole_units_at_ticks_from_the_first_hit() -> None:
    full = LeakyBucketState(3, 10.0)
    # 4.5 s: two units leaked (ticks at 12 and 14); the next tick is 16.
    _, d = leaky_bucket(full, LEAKY, 0, 14.5)
    assert d == Decision(True, 4, 3, 1.5)
    state, _ = leaky_bucket(full, LEAKY, 1, 14.5)
    assert state == LeakyBucketState(2, 14.0)
    # Exactly on a tick: 14.0 is two whole intervals after 10.0.
    state, d = leaky_bucket(full, LEAKY, 1, 14.0)
    assert (state, d) == (LeakyBucketState(2, 14.0), Decision(True, 4, 2, 4.0))


def test_leaky_an_emptied_bucket_restarts_its_ticks_now() -> None:
    # Two units, 5 s later: both leaked (exactly as many as held): a fresh bucket at 15.
    state, d = leaky_bucket(LeakyBucketState(2, 10.0), LEAKY, 1, 15.0)
    assert (state, d) == (LeakyBucketState(1, 15.0), Decision(True, 4, 3, 2.0))
    state, d = leaky_bucket(LeakyBucketState(2, 10.0), LEAKY, 1, 30.0)
    assert (state, d) == (LeakyBucketState(1, 30.0), Decision(True, 4, 3, 2.0))


def test_leaky_refunds_keep_the_tick_until_the_bucket_is_empty() -> None:
    full = LeakyBucketState(3, 10.0)
    state, d = leaky_bucket(full, LEAKY, -1, 11.0)
    assert (state, d) == (LeakyBucketState(2, 10.0), Decision(True, 4, 2, 3.0))
    state, d = leaky_bucket(full, LEAKY, -5, 11.0)
    assert (state, d) == (LeakyBucketState(0, 11.0), Decision(True, 4, 4, 0.0))
    # An emptied bucket is a fresh one, even if the clock then steps back.
    state, d = leaky_bucket(state, LEAKY, 1, 9.0)
    assert (state, d) == (LeakyBucketState(1, 9.0), Decision(True, 4, 3, 2.0))


def test_leaky_time_going_backwards_leaks_nothing() -> None:
    state, d = leaky_bucket(LeakyBucketState(2, 10.0), LEAKY, 1, 8.0)
    assert (state, d) == (LeakyBucketState(3, 10.0), Decision(True, 4, 1, 6.0))


# ------------------------------------------------------------------------------------ GCRA
def test_gcra_hits_peeks_and_refunds() -> None:
    state, d = gcra(None, GCRA, 1, 10.0)
    # TAT 12; tau = 4 * 2 = 8; remaining floor((8 - 2) / 2) = 3.
    assert (state, d) == (GCRAState(12.0, 2.0), Decision(True, 4, 3, 2.0))
    same, d = gcra(state, GCRA, 0, 10.0)
    assert same is state and d == Decision(True, 4, 3, 2.0)
    state, d = gcra(state, GCRA, -1, 10.0)
    assert (state, d) == (GCRAState(10.0, 2.0), Decision(True, 4, 4, 0.0))


def test_gcra_peek_at_the_exact_boundary_is_allowed() -> None:
    # TAT 16 at now 10: 16 + 2 - 8 = 10 <= 10: one more hit fits exactly.
    _, d = gcra(GCRAState(16.0, 2.0), GCRA, 0, 10.0)
    assert d == Decision(True, 4, 1, 6.0)
    _, d = gcra(GCRAState(18.0, 2.0), GCRA, 0, 10.0)
    assert d == Decision(False, 4, 0, 8.0)


def test_gcra_denials_and_force() -> None:
    full = GCRAState(18.0, 2.0)
    state, d = gcra(full, GCRA, 1, 10.0)
    assert state is full and d == Decision(False, 4, 0, 8.0, 2.0)
    _, d = gcra(full, GCRA, 5, 10.0)
    assert d == Decision(False, 4, 0, 8.0, math.inf)
    state, d = gcra(full, GCRA, 1, 10.0, True)
    assert (state, d) == (GCRAState(20.0, 2.0), Decision(True, 4, 0, 10.0))


def test_gcra_a_changed_rate_rescales_the_tokens_in_use() -> None:
    faster = Limit(8, 8.0, algorithm=Algorithm.GCRA)  # one unit per second, tau 8
    # 2 s of the old interval in use = 1 unit; at the new interval, 1 s.
    _, d = gcra(GCRAState(12.0, 2.0), faster, 0, 10.0)
    assert d == Decision(True, 8, 7, 1.0)
    # Half a second in use = 0.25 unit: 0.25 s at the new interval.
    _, d = gcra(GCRAState(10.5, 2.0), faster, 0, 10.0)
    assert d.reset_after == pytest.approx(0.25) and d.remaining == 7
    # A TAT in the past: nothing in use.
    _, d = gcra(GCRAState(5.0, 2.0), faster, 0, 10.0)
    assert d == Decision(True, 8, 8, 0.0)


# ---------------------------------------------------------------------------- token bucket
def test_token_bucket_peek_with_room_for_exactly_one() -> None:
    _, d = token_bucket(TokenBucketState(3.0, 10.0), TOKENS, 0, 10.0)
    assert d == Decision(True, 4, 1, 6.0)  # 3 tokens drain at 0.5/s: 6 s


def test_token_bucket_denials_report_the_level_drain_and_the_retry() -> None:
    state = TokenBucketState(3.0, 10.0)
    same, d = token_bucket(state, TOKENS, 2, 10.0)
    assert same is state and d == Decision(False, 4, 1, 6.0, 2.0)  # 1 token over: 2 s
    _, d = token_bucket(state, TOKENS, 4, 10.0)  # cost == capacity: 3 tokens over, 6 s
    assert d == Decision(False, 4, 1, 6.0, 6.0)
    _, d = token_bucket(state, TOKENS, 5, 10.0)
    assert d == Decision(False, 4, 1, 6.0, math.inf)
    # Directly, without force:
    assert token_bucket(TokenBucketState(4.0, 10.0), TOKENS, 1, 10.0)[1].allowed is False


def test_token_bucket_a_hit_filling_it_exactly_is_admitted() -> None:
    state, d = token_bucket(TokenBucketState(3.0, 10.0), TOKENS, 1, 10.0)
    assert (state, d) == (TokenBucketState(4.0, 10.0), Decision(True, 4, 0, 8.0))


# ------------------------------------------------------------------------------ expires_at
def test_expires_at_is_when_each_state_equals_no_state() -> None:
    assert expires_at(None, TOKENS, 7.0) == 7.0
    assert expires_at(TokenBucketState(3.0, 10.0), TOKENS, 0.0) == 16.0  # 3 / 0.5
    assert expires_at(LeakyBucketState(3, 10.0), LEAKY, 0.0) == 16.0  # 3 * 8 / 4
    assert expires_at(GCRAState(18.0, 2.0), GCRA, 0.0) == 18.0
    window = Limit(4, 8.0, algorithm=Algorithm.FIXED_WINDOW)
    assert expires_at(FixedWindowState(10.0, 3), window, 0.0) == 18.0
    log = Limit(4, 8.0, algorithm=Algorithm.SLIDING_WINDOW_LOG)
    assert expires_at(SlidingLogState(((10.0, 1), (12.5, 2))), log, 0.0) == 20.5
    assert expires_at(SlidingLogState(()), log, 3.0) == 3.0
    counter = Limit(4, 8.0, algorithm=Algorithm.SLIDING_WINDOW_COUNTER)
    assert expires_at(SlidingCounterState(10.0, 2, 1), counter, 0.0) == 26.0  # two windows


# ------------------------------------------------------------------------ sliding window log
LOG = Limit(4, 10.0, algorithm=Algorithm.SLIDING_WINDOW_LOG)
THREE = SlidingLogState(((10.0, 1), (12.0, 2)))  # 3 used; at 15 both are in the window


def test_log_peeks_and_hits_report_the_reset_of_the_newest_entry() -> None:
    same, d = sliding_window_log(THREE, LOG, 0, 15.0)
    assert same is THREE and d == Decision(True, 4, 1, 7.0)  # 12 + 10 - 15
    state, d = sliding_window_log(THREE, LOG, 1, 15.0)
    assert state == SlidingLogState(((10.0, 1), (12.0, 2), (15.0, 1)))
    assert d == Decision(True, 4, 0, 10.0)
    _, d = sliding_window_log(SlidingLogState(((10.0, 1),)), LOG, 0, 19.5)
    assert d == Decision(True, 4, 3, 0.5)


def test_log_hits_at_the_newest_instant_share_its_entry() -> None:
    state, d = sliding_window_log(THREE, LOG, 1, 12.0)
    assert (state, d) == (SlidingLogState(((10.0, 1), (12.0, 3))), Decision(True, 4, 0, 10.0))


@pytest.mark.parametrize(
    ("cost", "retry"),
    [
        (2, 5.0),  # the entry at 10 leaving (at 20) frees enough
        (3, 7.0),  # it takes the entry at 12 too (at 22)
        (4, 7.0),  # the whole limit: possible once both left
        (5, math.inf),  # over the limit: never
    ],
)
def test_log_denials_wait_for_enough_entries_to_leave(cost: int, retry: float) -> None:
    same, d = sliding_window_log(THREE, LOG, cost, 15.0)
    assert same is THREE and d == Decision(False, 4, 1, 7.0, retry)


def test_log_a_retry_shorter_than_a_second_is_kept() -> None:
    _, d = sliding_window_log(THREE, LOG, 2, 19.5)
    assert d == Decision(False, 4, 1, 2.5, 0.5)


def test_log_refunds_take_back_the_newest_hits_first() -> None:
    state, d = sliding_window_log(THREE, LOG, -1, 15.0)
    assert (state, d) == (SlidingLogState(((10.0, 1), (12.0, 1))), Decision(True, 4, 2, 7.0))
    state, d = sliding_window_log(THREE, LOG, -2, 15.0)  # exactly the newest entry
    assert (state, d) == (SlidingLogState(((10.0, 1),)), Decision(True, 4, 3, 5.0))
    four = SlidingLogState(((8.0, 1), (10.0, 1), (12.0, 2)))
    state, d = sliding_window_log(four, LOG, -3, 15.0)
    assert (state, d) == (SlidingLogState(((8.0, 1),)), Decision(True, 4, 3, 3.0))
    state, d = sliding_window_log(THREE, LOG, -9, 15.0)  # more than was used: nothing left
    assert (state, d) == (None, Decision(True, 4, 4, 0.0))


# -------------------------------------------------------------------- sliding window counter
COUNTER = Limit(10, 10.0, algorithm=Algorithm.SLIDING_WINDOW_COUNTER)


def test_counter_a_window_ending_exactly_now_becomes_the_previous_one() -> None:
    state, d = sliding_window_counter(SlidingCounterState(10.0, 0, 3), COUNTER, 1, 20.0)
    # The window [10, 20) is over at 20: its 3 hits weigh fully at the start of [20, 30).
    assert (state, d) == (SlidingCounterState(20.0, 3, 1), Decision(True, 10, 6, 20.0))


@pytest.mark.parametrize(
    ("prev", "cur", "cost", "now", "retry"),
    [
        # Enough of the previous window slides out: at frac 0.5 (0.05 s after 0.45).
        (10, 2, 3, 14.5, 0.5),
        # In the next window (the current count becomes the previous one).
        (2, 8, 5, 15.0, 8.75),  # 5 s to the end + 3.75 s for 8 * (1 - f) <= 5
        (5, 0, 10, 15.0, 5.0),  # the whole limit: once the previous window slid out
        (0, 3, 10, 15.0, 15.0),  # the whole limit on top of 3: a window later
        (0, 1, 10, 15.0, 15.0),
        (0, 1, 11, 15.0, math.inf),
    ],
)
def test_counter_denials_say_when_the_same_hit_would_pass(
    prev: int, cur: int, cost: int, now: float, retry: float
) -> None:
    state = SlidingCounterState(10.0, prev, cur)
    same, d = sliding_window_counter(state, COUNTER, cost, now)
    assert same is state and (d.allowed, d.limit) == (False, 10)
    assert d.retry_after == pytest.approx(retry)
    # Directly, without force, the denial stands; forced, it is admitted.
    forced, d = sliding_window_counter(state, COUNTER, cost, now, True)
    assert d.allowed and forced == SlidingCounterState(10.0, prev, cur + cost)


def test_counter_peeks_report_the_reset_of_each_window_state() -> None:
    # At 15, half of the window [10, 20) has passed: the previous count weighs half.
    for state, d in [
        (SlidingCounterState(10.0, 2, 3), Decision(True, 10, 6, 15.0)),  # cur > 0: 2 windows
        (SlidingCounterState(10.0, 2, 1), Decision(True, 10, 8, 15.0)),
        (SlidingCounterState(10.0, 1, 0), Decision(True, 10, 9, 5.0)),  # only prev: its end
        (SlidingCounterState(10.0, 0, 0), Decision(True, 10, 10, 0.0)),  # nothing
        (SlidingCounterState(10.0, 0, 10), Decision(False, 10, 0, 15.0)),
    ]:
        same, got = sliding_window_counter(state, COUNTER, 0, 15.0)
        assert same is state and got == d, state


def test_counter_refunds() -> None:
    state = SlidingCounterState(10.0, 2, 3)
    new, d = sliding_window_counter(state, COUNTER, -1, 15.0)
    assert (new, d) == (SlidingCounterState(10.0, 2, 2), Decision(True, 10, 7, 15.0))
    new, d = sliding_window_counter(SlidingCounterState(10.0, 2, 2), COUNTER, -1, 15.0)
    assert (new, d) == (SlidingCounterState(10.0, 2, 1), Decision(True, 10, 8, 15.0))
    new, d = sliding_window_counter(SlidingCounterState(10.0, 2, 1), COUNTER, -1, 15.0)
    assert (new, d) == (SlidingCounterState(10.0, 2, 0), Decision(True, 10, 9, 5.0))
    # Nothing left at all: the key is forgotten.
    new, d = sliding_window_counter(SlidingCounterState(10.0, 0, 1), COUNTER, -3, 15.0)
    assert (new, d) == (None, Decision(True, 10, 10, 0.0))


def test_counter_a_roll_over_several_windows_lands_on_the_current_one() -> None:
    # 30 s after the start of [10, 20): three windows later, [40, 50); nothing carries.
    state, d = sliding_window_counter(SlidingCounterState(10.0, 4, 3), COUNTER, 1, 40.0)
    assert (state, d) == (SlidingCounterState(40.0, 0, 1), Decision(True, 10, 9, 20.0))


# ---------------------------------------------------------------------------- fixed window
WINDOW = Limit(4, 10.0, algorithm=Algorithm.FIXED_WINDOW)


def test_fixed_window_hits_peeks_and_refunds_in_a_window() -> None:
    state, d = fixed_window(None, WINDOW, 1, 10.0)
    assert (state, d) == (FixedWindowState(10.0, 1), Decision(True, 4, 3, 10.0))
    three = FixedWindowState(10.0, 3)
    same, d = fixed_window(three, WINDOW, 0, 12.0)
    assert same is three and d == Decision(True, 4, 1, 8.0)
    same, d = fixed_window(FixedWindowState(10.0, 4), WINDOW, 0, 12.0)
    assert d == Decision(False, 4, 0, 8.0)
    state, d = fixed_window(three, WINDOW, -2, 12.0)
    assert (state, d) == (FixedWindowState(10.0, 1), Decision(True, 4, 3, 8.0))
    over = FixedWindowState(10.0, 6)  # forced over the limit
    state, d = fixed_window(over, WINDOW, -1, 12.0)
    assert (state, d) == (FixedWindowState(10.0, 5), Decision(True, 4, 0, 8.0))


def test_fixed_window_peeks_and_refunds_outside_a_window_change_nothing() -> None:
    for state in (None, FixedWindowState(10.0, 3)):  # no window, or it ended at 20
        same, d = fixed_window(state, WINDOW, 0, 25.0)
        assert same is state and d == Decision(True, 4, 4, 0.0)
        same, d = fixed_window(state, WINDOW, -1, 25.0)
        assert same is state and d == Decision(True, 4, 4, 0.0)


@pytest.mark.parametrize(("cost", "retry"), [(2, 8.0), (4, 8.0), (5, math.inf)])
def test_fixed_window_denials(cost: int, retry: float) -> None:
    three = FixedWindowState(10.0, 3)
    same, d = fixed_window(three, WINDOW, cost, 12.0)
    assert same is three and d == Decision(False, 4, 1, 8.0, retry)
    forced, d = fixed_window(three, WINDOW, cost, 12.0, True)
    assert forced == FixedWindowState(10.0, 3 + cost) and d.allowed


# ---------------------------------------------------------------------------------- decide
def test_a_refused_peek_says_when_a_hit_would_pass() -> None:
    # Forced to 5 tokens at 8; at 10 one has drained: 4 of 4, a hit needs 1 more: 2 s.
    state = TokenBucketState(5.0, 8.0)
    same, d = decide(state, TOKENS, 0, 10.0)
    assert same is state and d == Decision(False, 4, 0, 8.0, 2.0)
    # An allowed peek has no retry.
    assert decide(TokenBucketState(3.0, 10.0), TOKENS, 0, 10.0)[1].retry_after == 0.0


# --------------------------------------------------------------------- remaining boundaries
def test_short_unit_intervals_and_counts_over_the_limit() -> None:
    quick = Limit(4, 2.0, algorithm=Algorithm.LEAKY_BUCKET)  # a unit leaks every 0.5 s
    state, d = leaky_bucket(None, quick, 1, 10.0)
    assert (state, d) == (LeakyBucketState(1, 10.0), Decision(True, 4, 3, 0.5))
    state, d = leaky_bucket(LeakyBucketState(3, 10.0), quick, -2, 10.2)
    assert state == LeakyBucketState(1, 10.0) and d.remaining == 3
    assert d.reset_after == pytest.approx(0.3)
    state, d = leaky_bucket(LeakyBucketState(6, 10.0), LEAKY, -1, 10.0)  # forced over
    assert (state, d) == (LeakyBucketState(5, 10.0), Decision(True, 4, 0, 10.0))
    six = SlidingLogState(((10.0, 3), (12.0, 3)))
    state, d = sliding_window_log(six, LOG, -1, 15.0)
    assert (state, d) == (SlidingLogState(((10.0, 3), (12.0, 2))), Decision(True, 4, 0, 7.0))
    # GCRA, a cost equal to the capacity: possible once the bucket is empty.
    _, d = gcra(GCRAState(18.0, 2.0), GCRA, 4, 10.0)
    assert d == Decision(False, 4, 0, 8.0, 8.0)
    assert expires_at(SlidingLogState(((10.0, 1), (11.0, 1), (12.5, 2))), LOG, 0.0) == 22.5
