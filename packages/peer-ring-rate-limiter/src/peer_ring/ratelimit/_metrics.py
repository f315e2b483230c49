"""Metrics of one rate limiter node: plain counters plus Prometheus collectors.

Each :class:`RateLimiterMetrics` owns its :class:`~prometheus_client.CollectorRegistry`
unless one is injected, so several limiters in one process never collide on names.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram
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
        self._batches = Histogram(
            "peer_ring_ratelimit_forwarded_batch_size",
            "Hits per batch forwarded to owners (one message per batch).",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self._store: StateStore | None = None
        # Decisions counted in a plain dict and exported by _StoreCollector at scrape time:
        # a prometheus_client Counter.inc (a lock per call) cost as much as the decision.
        self._decisions: dict[tuple[str, bool, str], int] = {}
        self.forwarded = 0
        self.batches = 0
        self.max_batch = 0  # the largest forwarded batch
        self.owner_unavailable = 0
        self.replication_failures = 0
        self.global_syncs = 0
        self.state_batches = 0  # replication messages (one per replica node and batch)
        self.states_sent = 0  # key states in them
        # states sent with the owner's answer to a forwarder that is the key's other replica
        self.states_with_answer = 0
        # Relay protocol (see _relay): forwarded hits this owner had a replica answer, and
        # relayed decisions this replica sent on to their forwarders.
        self.relayed = 0
        self.relays_sent = 0
        self.relay_messages = 0  # `relayed` requests carrying them (one per forwarder)
        self.registry.register(_StoreCollector(self))

    def bind_store(self, store: StateStore) -> None:
        """Export the handoff counters of ``store``."""
        self._store = store

    def decision(self, limit: str, d: Decision) -> None:
        """Count one decision."""
        labels = (limit, d.allowed, d.source)
        counts = self._decisions
        counts[labels] = counts.get(labels, 0) + 1

    @property
    def allowed(self) -> int:
        """Decisions that admitted the hit (any limit, any source)."""
        return sum(n for (_, ok, _), n in self._decisions.items() if ok)

    @property
    def denied(self) -> int:
        """Decisions that refused the hit."""
        return sum(n for (_, ok, _), n in self._decisions.items() if not ok)

    def decision_counts(self) -> dict[tuple[str, bool, str], int]:
        """A copy of the decision counters by ``(limit label, allowed, source)``."""
        return dict(self._decisions)

    def observe_batch(self, size: int) -> None:
        """Record one forwarded batch of ``size`` hits."""
        self.batches += 1
        if size > self.max_batch:
            self.max_batch = size
        self._batches.observe(size)

    def snapshot(self) -> dict[str, Any]:
        """The plain counters as a dict."""
        store = self._store
        return {
            "allowed": self.allowed,
            "denied": self.denied,
            "forwarded": self.forwarded,
            "batches": self.batches,
            "max_batch": self.max_batch,
            "mean_batch": self.forwarded / self.batches if self.batches else 0.0,
            "owner_unavailable": self.owner_unavailable,
            "replication_failures": self.replication_failures,
            "global_syncs": self.global_syncs,
            "state_batches": self.state_batches,
            "mean_state_batch": self.states_sent / self.state_batches
            if self.state_batches
            else 0.0,
            "states_with_answer": self.states_with_answer,
            "relayed": self.relayed,
            "relays_sent": self.relays_sent,
            "relay_messages": self.relay_messages,
            "keys": 0 if store is None else len(store),
            "handoff_records_in": 0 if store is None else store.handoffs_in,
            "handoff_records_out": 0 if store is None else store.handoffs_out,
        }


class _StoreCollector:
    def __init__(self, metrics: RateLimiterMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        snap = self._metrics.snapshot()
        decisions = CounterMetricFamily(
            "peer_ring_ratelimit_decisions",
            "Rate limit decisions by limit name and result (allowed/denied).",
            labels=["limit", "result", "source"],
        )
        for (label, ok, source), n in self._metrics.decision_counts().items():
            decisions.add_metric([label, "allowed" if ok else "denied", source], n)
        yield decisions
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
