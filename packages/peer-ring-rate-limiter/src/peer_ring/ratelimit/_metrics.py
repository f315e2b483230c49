"""Metrics of one rate limiter node: plain counters plus Prometheus collectors.

Each :class:`RateLimiterMetrics` owns its :class:`~prometheus_client.CollectorRegistry`
unless one is injected, so several limiters in one process never collide on names.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, Metric

from peer_ring.ratelimit._decision import Decision

if TYPE_CHECKING:
    from peer_ring.ratelimit._store import StateStore

#: Buckets of the forwarded batch size histogram (items per batch).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class RateLimiterMetrics:
    """Decisions per limit name and outcome, forwarded batch sizes, handoffs.

    Args:
        registry: where the Prometheus collectors are registered (default: a new,
            private registry, exposed as :attr:`registry`).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._decisions = Counter(
            "peer_ring_ratelimit_decisions",
            "Rate limit decisions by limit name and result (allowed/denied).",
            ["limit", "result", "source"],
            registry=self.registry,
        )
        self._batches = Histogram(
            "peer_ring_ratelimit_forwarded_batch_size",
            "Hits per batch forwarded to owners (one execute_many per batch).",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self._store: StateStore | None = None
        self._children: dict[tuple[str, bool, str], Any] = {}
        self.allowed = 0
        self.denied = 0
        self.forwarded = 0
        self.batches = 0
        self.owner_unavailable = 0
        self.replication_failures = 0
        self.global_syncs = 0
        self.registry.register(_StoreCollector(self))

    def bind_store(self, store: StateStore) -> None:
        """Export the handoff counters of ``store``."""
        self._store = store

    def decision(self, limit: str, d: Decision) -> None:
        """Count one decision."""
        if d.allowed:
            self.allowed += 1
        else:
            self.denied += 1
        labels = (limit, d.allowed, d.source)
        child = self._children.get(labels)
        if child is None:
            # Label lookups cost more than the decision itself: keep the children.
            child = self._decisions.labels(limit, "allowed" if d.allowed else "denied", d.source)
            if len(self._children) < 10_000:
                self._children[labels] = child
        child.inc()

    def observe_batch(self, size: int) -> None:
        """Record one forwarded batch of ``size`` hits."""
        self.batches += 1
        self._batches.observe(size)

    def snapshot(self) -> dict[str, Any]:
        """The plain counters as a dict."""
        store = self._store
        return {
            "allowed": self.allowed,
            "denied": self.denied,
            "forwarded": self.forwarded,
            "batches": self.batches,
            "mean_batch": self.forwarded / self.batches if self.batches else 0.0,
            "owner_unavailable": self.owner_unavailable,
            "replication_failures": self.replication_failures,
            "global_syncs": self.global_syncs,
            "keys": 0 if store is None else len(store),
            "handoff_records_in": 0 if store is None else store.handoffs_in,
            "handoff_records_out": 0 if store is None else store.handoffs_out,
        }


class _StoreCollector:
    def __init__(self, metrics: RateLimiterMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        snap = self._metrics.snapshot()
        fam = CounterMetricFamily(
            "peer_ring_ratelimit_handoff_records",
            "Key states moved by data movement, by direction.",
            labels=["direction"],
        )
        fam.add_metric(["in"], snap["handoff_records_in"])
        fam.add_metric(["out"], snap["handoff_records_out"])
        yield fam
        yield CounterMetricFamily(
            "peer_ring_ratelimit_owner_unavailable",
            "Hits decided by the fail policy because the owner was unreachable.",
            value=snap["owner_unavailable"],
        )
