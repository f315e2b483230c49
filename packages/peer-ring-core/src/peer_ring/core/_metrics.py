"""Prometheus metrics of a :class:`~peer_ring.core.PeerRing` node, read at scrape time.

:class:`PeerRingCollector` is a ``prometheus_client`` custom collector: every figure comes
from the node's existing status (:meth:`PeerRing.sync_status`, the ring, the membership and
the transport's ``stats()`` / ``peer_stats()``) when Prometheus scrapes, so the hot path pays
nothing for metrics and they are never stale. Applications (the KV store, the rate limiter,
pub-sub) register their own collectors on the same registry.

``prometheus_client`` is an optional dependency (``pip install peer-ring-core[metrics]``);
this module imports it, the rest of the core never does.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from peer_ring.core.__about__ import __version__

if TYPE_CHECKING:
    from peer_ring.core._node import PeerRing

logger = logging.getLogger(__name__)

_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")

# sync_status() figures that are levels (gauges); every other number there is a counter.
_GAUGES: dict[tuple[str, str], str] = {
    ("partitions", "replicated"): "Partitions this node replicates (at the default N).",
    ("partitions", "pending"): "Partitions this node still pulls before serving them.",
    ("partitions", "held_for_handoff"): "Partitions no longer replicated here, kept until "
    "their new replicas confirmed the handoff.",
    ("partitions", "initial_total"): "Partitions the initial sync had to bring in.",
    ("partitions", "stray"): "Partitions held here that this node no longer replicates.",
    ("hints", "pending_total"): "Hints stored here waiting for their target to come back.",
    ("hints", "pending_bytes"): "Bytes of the hints stored here.",
    ("anti_entropy", "enabled"): "1 when periodic anti-entropy runs on this node.",
    ("anti_entropy", "after_pull_waiting"): "Partitions that received writes while this node "
    "pulled them, waiting to be compared with their replicas after the pull.",
}

# Counters with a documented meaning (the rest keep their sync_status() name).
_COUNTER_DOCS: dict[tuple[str, str], str] = {
    ("partitions", "synced"): "Partitions pulled from their previous holders.",
    ("partitions", "handed_off"): "Partitions handed off to their new replicas (handoffs done).",
    ("partitions", "dropped"): "Partitions dropped after a confirmed handoff.",
    ("partitions", "records_received"): "Records received by partition pulls.",
    ("partitions", "bytes_received"): "Bytes of records received by partition pulls.",
    ("partitions", "records_applied"): "Received records that changed the store (newer or "
    "missing here), when the application reports it.",
    ("partitions", "versions_bytes_sent"): "Bytes of version lists sent to pull only the "
    "records that differ.",
    ("partitions", "delta_requests"): "Requests for the records that differ (delta transfers).",
    ("partitions", "buckets_transferred_whole"): "Digest buckets moved whole because the peer "
    "could not filter by version.",
    ("hints", "stored"): "Hints stored for unreachable replicas.",
    ("hints", "delivered"): "Hints delivered to their target.",
    ("anti_entropy", "rounds"): "Anti-entropy rounds run.",
    ("anti_entropy", "partitions_compared"): "Partitions compared with a peer by anti-entropy.",
    ("anti_entropy", "partitions_repaired"): "Partitions repaired by anti-entropy.",
    ("anti_entropy", "after_pull_noted"): "Partitions that received a write while this node "
    "pulled them (the application may have refused it).",
    ("anti_entropy", "after_pull_compared"): "Of those, partitions compared with every other "
    "replica right after their pull.",
    ("anti_entropy", "after_pull_repaired"): "Partitions compared after their pull that "
    "received records (a write refused during the pull, or one the pull missed).",
    ("anti_entropy", "after_pull_records_received"): "Records received by the comparisons "
    "after a pull.",
    ("membership", "probes_failed"): "Peer probes that failed.",
    ("send", "failed"): "Fire-and-forget sends that failed (never retried).",
    ("reads", "speculative"): "Quorum reads that asked one more replica because the first "
    "ones were slower than read_speculate_after.",
    ("reads", "retried"): "Quorum reads that asked another replica because one refused or failed.",
}


class PeerRingCollector:
    """Exports one node's ring, data-movement and transport figures.

    Register it on any registry (``registry.register(PeerRingCollector(node))``) or use
    :func:`register_metrics`. A scrape never fails because one source misbehaves: each
    block is guarded and only loses its own metrics (with a log line).

    Args:
        node: the node (read at scrape time; it may be stopped or not started yet).
    """

    def __init__(self, node: PeerRing) -> None:
        self._node = node

    def collect(self) -> Iterable[Metric]:
        """The metrics, computed now (called by ``prometheus_client`` on each scrape)."""
        yield from self._guarded("node", self._node_metrics)
        yield from self._guarded("ring", self._ring_metrics)
        yield from self._guarded("sync", self._sync_metrics)
        yield from self._guarded("transport", self._transport_metrics)
        yield from self._guarded("peers", self._peer_metrics)

    def _guarded(self, what: str, produce: Callable[[], Iterable[Metric]]) -> list[Metric]:
        try:
            return list(produce())
        except Exception:
            logger.warning("collecting %s metrics failed", what, exc_info=True)
            return []

    def _node_metrics(self) -> Iterable[Metric]:
        node = self._node
        info = GaugeMetricFamily(
            "peer_ring_node_info",
            "Core version and peer address of this node (value is always 1).",
            labels=("version", "address"),
        )
        info.add_metric((__version__, node.address), 1.0)
        yield info
        yield GaugeMetricFamily(
            "peer_ring_node_ready",
            "1 when the node is running, joined and has pulled every partition it serves.",
            value=1.0 if node.running and node.ready else 0.0,
        )

    def _ring_metrics(self) -> Iterable[Metric]:
        node = self._node
        ring = node.ring
        membership = node.membership
        yield GaugeMetricFamily(
            "peer_ring_members", "Members in this node's ring.", value=float(len(ring.members))
        )
        suspected = membership.suspected
        yield GaugeMetricFamily(
            "peer_ring_suspected_peers",
            "Peers this node currently cannot reach (still in the ring).",
            value=float(len(suspected)),
        )
        states = GaugeMetricFamily(
            "peer_ring_member_up",
            "Per member of the ring: 1 when reachable, 0 when suspected (labels: peer, zone).",
            labels=("peer", "zone"),
        )
        for address in sorted(ring.members):
            member = node.members.get(address)
            zone = member.metadata.get("zone", "") if member is not None else ""
            states.add_metric((address, zone), 0.0 if address in suspected else 1.0)
        yield states
        yield GaugeMetricFamily(
            "peer_ring_partitions", "Partitions of the ring (P).", value=float(ring.partitions)
        )
        yield GaugeMetricFamily(
            "peer_ring_owned_partitions",
            "Partitions whose preference list this node heads.",
            value=float(len(ring.partitions_of(node.address, 1))),
        )
        yield GaugeMetricFamily(
            "peer_ring_replica_partitions",
            "Partitions this node replicates at the default replication.",
            value=float(len(ring.partitions_of(node.address, node.config.replication))),
        )

    def _sync_metrics(self) -> Iterable[Metric]:
        status = self._node.sync_status()
        for section in ("partitions", "hints", "anti_entropy", "membership", "send", "reads"):
            values = status.get(section)
            if not isinstance(values, Mapping):
                continue
            for name, value in sorted(values.items()):
                yield from self._status_value(section, str(name), value)
        yield from self._quorum_failures(status.get("quorum_failures"))
        yield from self._clock_offsets(status.get("clock"))

    def _status_value(self, section: str, name: str, value: object) -> Iterable[Metric]:
        base = f"peer_ring_{section}_{_sanitize(name)}"
        if section == "hints" and name == "pending" and isinstance(value, Mapping):
            family = GaugeMetricFamily(
                "peer_ring_hints_pending_by_target",
                "Hints stored here per target replica.",
                labels=("target",),
            )
            for target, count in sorted(value.items(), key=lambda kv: str(kv[0])):
                number = _number(count)
                if number is not None:
                    family.add_metric((str(target),), number)
            yield family
            return
        if section == "membership" and isinstance(value, list | tuple | set | frozenset):
            # suspected / down / left: the addresses themselves are in /cluster; count them.
            yield GaugeMetricFamily(base, f"Peers in membership state {name!r}.", len(value))
            return
        number = _number(value)
        if number is None:
            return
        key = (section, name)
        if key in _GAUGES:
            # "_total" is the counters' suffix: pending_total is exported as ..._pending.
            yield GaugeMetricFamily(base.removesuffix("_total"), _GAUGES[key], value=number)
        else:
            doc = _COUNTER_DOCS.get(key, f"sync_status()[{section!r}][{name!r}].")
            yield CounterMetricFamily(base, doc, value=number)

    def _quorum_failures(self, failures: object) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "peer_ring_quorum_failures",
            "Operations (execute, or one key of execute_many) that did not reach their quorum, "
            "by namespace.",
            labels=("namespace",),
        )
        if isinstance(failures, Mapping):
            for namespace, count in sorted(failures.items(), key=lambda kv: str(kv[0])):
                number = _number(count)
                if number is not None:
                    family.add_metric((str(namespace),), number)
        yield family

    def _clock_offsets(self, clock: object) -> Iterable[Metric]:
        # Exported when the node measures clock offsets to its peers (sync_status()["clock"]
        # with an "offsets" mapping peer -> seconds); nothing otherwise.
        if not isinstance(clock, Mapping):
            return
        offsets = clock.get("offsets")
        if not isinstance(offsets, Mapping):
            return
        family = GaugeMetricFamily(
            "peer_ring_clock_offset_seconds",
            "Estimated offset of each peer's clock relative to this node's (seconds).",
            labels=("peer",),
        )
        for peer, offset in sorted(offsets.items(), key=lambda kv: str(kv[0])):
            number = _number(offset)
            if number is not None:
                family.add_metric((str(peer),), number)
        yield family

    def _transport_metrics(self) -> Iterable[Metric]:
        # stats() is not part of the Transport protocol (the in-memory one has none).
        stats = _call(self._node.transport, "stats")
        if not isinstance(stats, Mapping):
            return
        for name, value in sorted(stats.items(), key=lambda kv: str(kv[0])):
            number = _number(value)
            if number is not None:
                # Gauges (not counters) to keep the names operators already scrape.
                yield GaugeMetricFamily(
                    f"peer_ring_transport_{_sanitize(str(name))}",
                    f"Transport counter {name!r} since start.",
                    value=number,
                )

    def _peer_metrics(self) -> Iterable[Metric]:
        peers = _call(self._node.transport, "peer_stats")
        if not isinstance(peers, Mapping):
            return
        families: dict[str, GaugeMetricFamily] = {}
        docs = {
            "in_flight": "Requests written to the peer and not answered yet.",
            "pending": "Requests accepted for the peer and not resolved (queued + in flight).",
            "latency_seconds": "Moving average of the request round trip to the peer (seconds).",
        }
        for peer, figures in sorted(peers.items(), key=lambda kv: str(kv[0])):
            if not isinstance(figures, Mapping):
                continue
            for name, value in figures.items():
                number = _number(value)
                if number is None:
                    continue
                family = families.get(name)
                if family is None:
                    family = families[name] = GaugeMetricFamily(
                        f"peer_ring_peer_{_sanitize(str(name))}",
                        docs.get(name, f"Per-peer transport figure {name!r}."),
                        labels=("peer",),
                    )
                family.add_metric((str(peer),), number)
        yield from families.values()


def register_metrics(
    node: PeerRing, registry: CollectorRegistry | None = None
) -> CollectorRegistry:
    """Register ``node``'s metrics on ``registry`` (a new one when not given) and return it.

    Args:
        node: the node whose metrics to export.
        registry: where to register them; pass ``prometheus_client.REGISTRY`` to use the
            process-global one. Each node needs its own registry (or distinct processes):
            two nodes on one registry would export the same names twice.

    Returns:
        The registry, for ``prometheus_client.generate_latest(registry)``.
    """
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
    registry.register(PeerRingCollector(node))
    return registry


def _call(obj: object, method: str) -> Any:
    fn = getattr(obj, method, None)
    return fn() if callable(fn) else None


def _number(value: object) -> float | None:
    # bool is an int subclass: True/False export as 1/0.
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _sanitize(name: str) -> str:
    cleaned = _NAME_UNSAFE.sub("_", name).strip("_").lower()
    return cleaned or "unnamed"
