"""The issue's targets on the simulator (fixed seeds, virtual time, 50-200 members).

Each test asserts the correctness property with margin; the figures themselves are printed by
``python -m peer_ring.discovery.gossip.testing`` and recorded in the README.
"""

from __future__ import annotations

import pytest

from peer_ring.discovery.gossip.testing import _scenarios as scenarios


def test_a_killed_node_is_dead_in_every_view_within_the_targets() -> None:
    d = scenarios.detection(100, kills=8, seed=21)
    assert d.median <= 10.0, d.times
    assert max(d.times) <= 15.0, d.times


@pytest.mark.slow
def test_200_members_detect_a_failure_within_the_targets() -> None:
    d = scenarios.detection(200, kills=3, seed=22)
    assert max(d.times) <= 15.0, d.times


def test_a_graceful_leave_is_seen_everywhere_within_a_second() -> None:
    times = scenarios.leave_times(60, leaves=5, seed=23)
    assert max(times) <= 1.0, times


@pytest.mark.slow
def test_no_healthy_node_is_declared_dead_under_ten_percent_loss() -> None:
    run = scenarios.lossy_run(60, loss=0.10, seconds=600.0, seed=24)
    assert run.suspicions > 0  # the loss is real: probes do fail...
    assert run.deaths == 0  # ...but every suspicion is refuted in time
    assert run.converged


@pytest.mark.slow
def test_lifeguard_cuts_false_suspicions_from_a_starved_member() -> None:
    on = scenarios.starved_run(40, max_lag=3.0, seconds=600.0, lifeguard=True, seed=25)
    off = scenarios.starved_run(40, max_lag=3.0, seconds=600.0, lifeguard=False, seed=25)
    assert off.suspicions >= 10, off  # without Lifeguard the starved member accuses others
    assert on.suspicions * 10 <= off.suspicions, (on, off)
    assert on.deaths == 0 and off.deaths == 0
    assert on.converged


def test_idle_traffic_is_within_budget() -> None:
    t = scenarios.idle_traffic(50, seconds=120.0, seed=26)
    assert t.packets_per_second <= 3.0, t
    assert t.bytes_per_second <= 1024, t
