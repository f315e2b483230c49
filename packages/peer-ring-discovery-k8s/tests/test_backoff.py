"""Backoff delays: growth, cap, jitter bounds, reset, determinism under a seed."""

from __future__ import annotations

import random

import pytest

from peer_ring.discovery.k8s import Backoff


def test_delays_grow_to_the_cap_and_reset() -> None:
    backoff = Backoff(initial=1.0, maximum=5.0, multiplier=2.0, jitter=0.0)
    assert [backoff.next() for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    backoff.reset()
    assert backoff.next() == 1.0


def test_jitter_stays_within_bounds_and_is_reproducible_with_a_seed() -> None:
    a = Backoff(initial=1.0, maximum=1.0, jitter=0.2, rng=random.Random(7))
    b = Backoff(initial=1.0, maximum=1.0, jitter=0.2, rng=random.Random(7))
    delays = [a.next() for _ in range(200)]
    assert delays == [b.next() for _ in range(200)]
    assert all(0.8 <= d <= 1.2 for d in delays)
    assert len(set(delays)) > 1


@pytest.mark.parametrize(
    "kwargs",
    [{"initial": 0}, {"initial": 2, "maximum": 1}, {"multiplier": 0.5}, {"jitter": 1.0}],
)
def test_invalid_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)
