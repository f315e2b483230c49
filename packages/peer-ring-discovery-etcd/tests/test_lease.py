"""The lease state machine and the backoff (pure, times passed in)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from peer_ring.discovery.etcd import DEFAULT_TTL, Backoff, LeaseState, LeaseTracker


def test_keepalives_every_third_of_the_ttl_after_the_last_confirmation() -> None:
    t = LeaseTracker()
    assert t.needs_registration and t.state is LeaseState.UNREGISTERED
    t.on_registered(7, 15, now=100.0)
    assert not t.needs_registration and t.lease_id == 7
    assert t.keepalive_delay(100.0) == pytest.approx(5.0)
    assert t.keepalive_delay(104.0) == pytest.approx(1.0)
    assert t.keepalive_delay(120.0) == 0.0  # overdue (a stalled loop): send at once
    assert t.on_keepalive(15, now=105.0)
    assert t.keepalive_delay(105.0) == pytest.approx(5.0)


def test_ttl_zero_or_below_means_expired_and_registering_again() -> None:
    for answer in (0, -1):
        t = LeaseTracker()
        t.on_registered(7, 15, now=0.0)
        assert not t.on_keepalive(answer, now=1.0)
        assert t.state is LeaseState.EXPIRED and t.needs_registration and t.lease_id is None
        assert t.expirations == 1
        t.on_registered(8, 15, now=1.1)
        assert not t.needs_registration and t.lease_id == 8


def test_failures_keep_the_lease_and_retry_soon() -> None:
    t = LeaseTracker(retry_delay=0.5)
    t.on_registered(7, 15, now=0.0)
    t.on_failure()
    t.on_failure()
    # No answer proves nothing: the lease may live (etcd extends leases when it restarts).
    assert t.state is LeaseState.REGISTERED and t.lease_id == 7
    assert t.keepalive_delay(1.0) == 0.5
    assert not t.presumed_expired(14.9) and t.presumed_expired(15.0)
    assert t.on_keepalive(15, now=20.0)  # etcd came back and still had it
    assert t.failures == 0 and t.keepalive_delay(20.0) == pytest.approx(5.0)


def test_a_five_second_stall_fits_in_the_default_ttl() -> None:
    # Worst case: the loop stalls 5 s right when a keep-alive is due, and the first
    # attempt after the stall fails once (retried after retry_delay).
    t = LeaseTracker(retry_delay=0.5)
    t.on_registered(1, DEFAULT_TTL, now=0.0)
    due = t.keepalive_delay(0.0)
    sent = due + 5.0 + 0.5 + 2.0  # stall, one retry, a keep-alive at its 2 s deadline
    assert not t.presumed_expired(sent)
    assert DEFAULT_TTL - sent >= 2.0  # margin left


def test_tracker_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        LeaseTracker(retry_delay=0)


def test_backoff_grows_caps_and_resets() -> None:
    b = Backoff(initial=0.2, maximum=1.0, jitter=0.0)
    assert [round(b.next(), 3) for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    b.reset()
    assert b.next() == pytest.approx(0.2)


def test_backoff_jitter_stays_within_bounds() -> None:
    b = Backoff(initial=1.0, maximum=1.0, jitter=0.2, rng=random.Random(3))
    delays = [b.next() for _ in range(200)]
    assert all(0.8 <= d <= 1.2 for d in delays)
    assert max(delays) - min(delays) > 0.2  # it does spread


@pytest.mark.parametrize(
    "kwargs", [{"initial": 0}, {"initial": 2, "maximum": 1}, {"multiplier": 0.5}, {"jitter": 1}]
)
def test_backoff_rejects_bad_bounds(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)
