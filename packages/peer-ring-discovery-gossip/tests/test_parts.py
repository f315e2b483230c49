"""The small pure parts: suspicion timeout, health awareness, gossip queue, timers, config."""

from __future__ import annotations

import math

import pytest

from peer_ring.core import InvalidArgumentError
from peer_ring.discovery.gossip import GossipConfig, initial_incarnation
from peer_ring.discovery.gossip._awareness import Awareness
from peer_ring.discovery.gossip._broadcasts import BroadcastQueue
from peer_ring.discovery.gossip._suspicion import Suspicion
from peer_ring.discovery.gossip._timers import Timers


def test_suspicion_shrinks_with_independent_confirmations() -> None:
    s = Suspicion("a", k=3, low=2.0, high=12.0, start=100.0)
    assert s.deadline() == pytest.approx(112.0)
    assert not s.confirm("a")  # the accuser itself is no confirmation
    assert s.confirm("b")
    assert not s.confirm("b")  # nor is the same member twice
    assert s.deadline() == pytest.approx(100 + 12 - math.log(2) / math.log(4) * 10)
    assert s.confirm("c") and s.confirm("d")
    assert s.deadline() == pytest.approx(102.0)
    assert not s.confirm("e")  # k reached
    assert Suspicion("a", k=0, low=2.0, high=12.0, start=0.0).deadline() == 2.0


def test_awareness_is_bounded_and_scales() -> None:
    a = Awareness(8)
    a.apply(-3)
    assert a.score == 0 and a.scale(0.5) == 0.5
    a.apply(20)
    assert a.score == 7 and a.scale(1.0) == 8.0
    off = Awareness(1)
    off.apply(5)
    assert off.scale(1.0) == 1.0


def test_broadcast_queue_replaces_prioritises_and_retires() -> None:
    q = BroadcastQueue()
    q.queue("a", b"old-a")
    q.queue("a", b"new-a")
    q.queue("b", b"b" * 10)
    assert len(q) == 2 and q.pending("a") == b"new-a"
    first = q.take(budget=1000, overhead=2, limit=2)
    assert first == [b"b" * 10, b"new-a"]  # newest first among equally sent
    q.queue("c", b"c")
    assert q.take(budget=1000, overhead=2, limit=2)[0] == b"c"  # least sent first
    assert len(q) == 1  # a and b were sent twice: retired
    assert q.take(budget=2, overhead=2, limit=5) == []  # does not fit


def test_timers_fire_in_order_and_replace() -> None:
    t = Timers()
    t.set("x", 5.0)
    t.set("y", 3.0)
    t.set("x", 1.0)
    t.set("z", 9.0)
    t.cancel("z")
    assert t.next_deadline() == 1.0
    assert t.pop_due(4.0) == ("x", 1.0)
    assert t.pop_due(4.0) == ("y", 3.0)
    assert t.pop_due(4.0) is None
    assert t.next_deadline() is None


def test_config_presets_and_validation() -> None:
    lan, local, wan = GossipConfig.lan(), GossipConfig.local(), GossipConfig.wan()
    assert local.probe_timeout < lan.probe_timeout < wan.probe_timeout
    assert GossipConfig.preset("local", cluster="x").cluster == "x"
    assert lan.retransmit_limit(100) == math.ceil(4 * math.log(101))
    low, high = lan.suspicion_timeouts(100)
    assert low == pytest.approx(6.0) and high == pytest.approx(36.0)
    assert lan.push_pull_period(32) == 30.0 and lan.push_pull_period(200) == 120.0
    with pytest.raises(InvalidArgumentError):
        GossipConfig(probe_interval=0)
    with pytest.raises(InvalidArgumentError):
        GossipConfig(probe_timeout=2.0)
    with pytest.raises(InvalidArgumentError):
        GossipConfig(indirect_checks=0)
    with pytest.raises(InvalidArgumentError):
        GossipConfig(cluster="")
    with pytest.raises(InvalidArgumentError):
        GossipConfig.preset("moon")


def test_a_restart_starts_above_its_predecessor() -> None:
    before = initial_incarnation(1_800_000_000.0)
    # Even after a million refutations, a process started 1 ms later is newer.
    assert initial_incarnation(1_800_000_000.001) > before + 1_000_000
