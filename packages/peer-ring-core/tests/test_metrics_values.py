"""The metrics collector exports only real numbers, whatever its sources hand it.

A scrape must never fail or export garbage because one figure is odd: a section that is
not a mapping, a text where a count was expected, NaN or infinity (a latency average with
no samples), a peer entry that is not a mapping. The node is real; its status and its
transport's figures are replaced by ones holding such values.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from peer_ring.core import PeerRing, PeerRingConfig
from peer_ring.core.metrics import PeerRingCollector, register_metrics
from peer_ring.core.testing import FakeClock, FixedDiscovery, MemoryNetwork

ME = "n1:1"

ODD_STATUS: dict[str, Any] = {
    "partitions": "not a mapping",
    "hints": {"pending": {"b:1": 3, "c:1": "three", "d:1": math.nan}, "stored": 7},
    "membership": {"suspected": ["x:1", "y:1"], "down": frozenset(), "note": "text"},
    "anti_entropy": {"rounds": math.inf, "enabled": True},
    "send": {"sent": 4, "failed": None},
    "quorum_failures": {"kv": 2, "odd": "many"},
    "clock": {"offsets": {"p:1": 0.25, "q:1": "n/a", "r:1": -math.inf}},
}


def samples(node: PeerRing) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in PeerRingCollector(node).collect():
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            out.setdefault(sample.name, {})[labels] = sample.value
    return out


@pytest.fixture
def node() -> PeerRing:
    net = MemoryNetwork(FakeClock())
    return PeerRing(
        FixedDiscovery(ME, [ME]),
        config=PeerRingConfig(partitions=8, replication=1),
        transport=net.transport(ME),
    )


def test_odd_status_values_are_left_out_and_numbers_exported(node: PeerRing) -> None:
    node.sync_status = lambda: ODD_STATUS  # type: ignore[method-assign]
    got = samples(node)
    assert got["peer_ring_hints_pending_by_target"] == {(("target", "b:1"),): 3.0}
    assert got["peer_ring_hints_stored_total"] == {(): 7.0}
    assert got["peer_ring_membership_suspected"] == {(): 2.0}
    assert got["peer_ring_membership_down"] == {(): 0.0}
    assert got["peer_ring_anti_entropy_enabled"] == {(): 1.0}  # a bool exports as 1
    assert got["peer_ring_send_sent_total"] == {(): 4.0}
    assert got["peer_ring_quorum_failures_total"] == {(("namespace", "kv"),): 2.0}
    assert got["peer_ring_clock_offset_seconds"] == {(("peer", "p:1"),): 0.25}
    for absent in (
        "peer_ring_partitions_replicated",  # the section was not a mapping
        "peer_ring_membership_note",
        "peer_ring_membership_note_total",
        "peer_ring_anti_entropy_rounds_total",  # infinite
        "peer_ring_send_failed_total",  # None
    ):
        assert absent not in got, absent
    # And the whole registry still renders.
    text = generate_latest(register_metrics(node)).decode()
    assert 'peer_ring_hints_pending_by_target{target="b:1"} 3.0' in text
    assert "nan" not in text.lower() and "inf" not in text.lower().replace("info", "")


@pytest.mark.parametrize(
    "clock", [None, "skewed", {"offsets": None}, {"offsets": [("p:1", 0.1)]}, {}]
)
def test_clock_offsets_are_exported_only_from_a_mapping(node: PeerRing, clock: Any) -> None:
    status = {"clock": clock, "quorum_failures": None, "send": {"sent": 1}}
    node.sync_status = lambda: status  # type: ignore[method-assign]
    got = samples(node)
    assert "peer_ring_clock_offset_seconds" not in got
    # The rest of the block is still exported (an error would have lost all of it).
    assert got["peer_ring_send_sent_total"] == {(): 1.0}
    assert "peer_ring_quorum_failures_total" not in got  # a family without samples


def test_transport_and_peer_figures_keep_only_numbers(node: PeerRing) -> None:
    transport: Any = node.transport
    transport.stats = lambda: {"frames_sent": 5, "mode": "fast", "ratio": math.nan}
    transport.peer_stats = lambda: {
        "p:1": {"in_flight": 2, "latency_seconds": math.nan, "custom": 1},
        "p:2": "unreachable",
        "p:3": {"in_flight": 0},
    }
    got = samples(node)
    transport_names = {name for name in got if name.startswith("peer_ring_transport_")}
    assert transport_names == {"peer_ring_transport_frames_sent"}
    assert got["peer_ring_peer_in_flight"] == {(("peer", "p:1"),): 2.0, (("peer", "p:3"),): 0.0}
    assert got["peer_ring_peer_custom"] == {(("peer", "p:1"),): 1.0}
    assert "peer_ring_peer_latency_seconds" not in got
    families = {f.name: f for f in PeerRingCollector(node).collect()}
    assert families["peer_ring_peer_custom"].documentation == "Per-peer transport figure 'custom'."


def test_a_transport_without_figures_exports_none(node: PeerRing) -> None:
    transport: Any = node.transport
    transport.stats = lambda: ["not", "a", "mapping"]
    transport.peer_stats = lambda: None
    got = samples(node)
    assert not any(name.startswith(("peer_ring_transport_", "peer_ring_peer_")) for name in got)
    # The other blocks are unaffected.
    assert got["peer_ring_node_ready"] == {(): 0.0}  # not started
    assert got["peer_ring_partitions"] == {(): 8.0}


def test_register_metrics_uses_the_registry_it_is_given(node: PeerRing) -> None:
    registry = CollectorRegistry(auto_describe=False)
    assert register_metrics(node, registry) is registry
    assert registry.get_sample_value("peer_ring_partitions") == 8.0
    assert register_metrics(node) is not registry  # a fresh one otherwise
