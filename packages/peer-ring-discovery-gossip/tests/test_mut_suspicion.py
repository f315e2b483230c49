"""Suspicion timeout edge cases the mutation run found untested (tools/mutation)."""

from __future__ import annotations

import pytest

from peer_ring.discovery.gossip._suspicion import Suspicion


def test_with_k_one_a_lone_suspicion_runs_the_maximum_and_one_confirmation_the_minimum() -> None:
    s = Suspicion("a", k=1, low=2.0, high=10.0, start=100.0)
    assert s.timeout() == pytest.approx(10.0)
    assert s.deadline() == pytest.approx(110.0)
    assert s.confirm("b")
    assert s.timeout() == pytest.approx(2.0)
    assert not s.confirm("c")  # k reached: further confirmations change nothing


def test_k_zero_is_always_the_minimum() -> None:
    s = Suspicion("a", k=0, low=2.0, high=10.0, start=0.0)
    assert s.timeout() == 2.0
    assert not s.confirm("b")
