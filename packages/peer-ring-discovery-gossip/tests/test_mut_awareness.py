"""Lifeguard awareness starts healthy (tools/mutation found the initial score untested)."""

from __future__ import annotations

from peer_ring.discovery.gossip._awareness import Awareness


def test_a_new_node_is_healthy_and_scales_nothing() -> None:
    a = Awareness(8)
    assert a.score == 0
    assert a.scale(1.5) == 1.5
    a.apply(1)
    assert a.scale(1.5) == 3.0
