"""Prometheus metrics of one ``peer-ring-kv serve`` node (``GET /metrics``).

Each :class:`KVMetrics` owns its own :class:`~prometheus_client.CollectorRegistry` instead of
the process-global one: several stores in one process (tests, an application embedding two
clusters) must not collide on metric names, and a store that stops must take its metrics
with it.

Two kinds of metrics:

- HTTP request counters and latency histograms, updated as requests finish.
- Store, ring and transport figures, read *at scrape time* from ``store.stats()``,
  ``store.node`` and ``node.transport.stats()`` by a custom collector, so that the hot path
  of the store pays nothing for them and they are never stale.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from peer_ring.core import PeerRing
from peer_ring.kv.__about__ import __version__

logger = logging.getLogger(__name__)

#: Content type of the text exposition format served by ``GET /metrics``.
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST

#: Latency buckets in seconds: sub-millisecond local reads up to multi-second timeouts.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

# Store statistics with a documented meaning, exported under stable names and types.
# Anything else `stats()` returns is exported as a gauge `peer_ring_kv_store_<name>`.
_STORE_GAUGES = {
    "keys": ("peer_ring_kv_keys", "Live keys held by this node's local store."),
    "size_bytes": ("peer_ring_kv_size_bytes", "Bytes accounted to this node's local store."),
}
_STORE_COUNTERS = {
    "evictions": ("peer_ring_kv_evictions", "Keys evicted to respect --max-bytes (LRU)."),
    "expired": ("peer_ring_kv_expired", "Keys removed because their TTL elapsed."),
    "read_repairs": ("peer_ring_kv_read_repairs", "Stale replicas updated after quorum reads."),
}
_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")


class _StoreLike(Protocol):
    """What the collector reads from a :class:`~peer_ring.kv.KVStore`."""

    @property
    def node(self) -> PeerRing: ...

    def stats(self) -> Mapping[str, int | float]: ...


class KVMetrics:
    """The metrics of one store and its HTTP API.

    Args:
        store: the store (its ``stats()`` and ``node`` are read at scrape time).
        ready: returns whether the node reports ready (exported as ``peer_ring_ready``).
        replication: the default replication, for the per-node replica partition count.
    """

    def __init__(
        self,
        store: _StoreLike,
        *,
        ready: Callable[[], bool] = lambda: True,
        replication: int | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.http_requests = Counter(
            "peer_ring_kv_http_requests",
            "HTTP API requests handled, by operation and status code.",
            ("op", "status"),
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "peer_ring_kv_http_request_duration_seconds",
            "Latency of HTTP API requests, by operation and status code.",
            ("op", "status"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.http_auth_failures = Counter(
            "peer_ring_kv_http_auth_failures",
            "HTTP API requests refused with 401, by reason (missing or invalid token).",
            ("reason",),
            registry=self.registry,
        )
        for reason in ("missing", "invalid"):
            self.http_auth_failures.labels(reason)  # exported as 0 before the first refusal
        self.registry.register(_NodeCollector(store, ready, replication))

    def observe(self, op: str, status: int, seconds: float) -> None:
        """Record one finished HTTP request."""
        code = str(status)
        self.http_requests.labels(op, code).inc()
        self.http_latency.labels(op, code).observe(seconds)

    def auth_failure(self, reason: str) -> None:
        """Record one request refused for its bearer token (``missing`` or ``invalid``)."""
        self.http_auth_failures.labels(reason).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric of this store."""
        return generate_latest(self.registry)


class _NodeCollector:
    """Reads store, ring and transport figures when Prometheus scrapes."""

    def __init__(
        self, store: _StoreLike, ready: Callable[[], bool], replication: int | None
    ) -> None:
        self._store = store
        self._ready = ready
        self._replication = replication

    def collect(self) -> Iterable[Metric]:
        # A scrape must never fail because one source misbehaves: each block is guarded,
        # and a broken source only loses its own metrics (with a log line to explain it).
        yield from self._guarded("build", self._build_info)
        yield from self._guarded("store", self._store_metrics)
        yield from self._guarded("ring", self._ring_metrics)
        yield from self._guarded("transport", self._transport_metrics)

    def _guarded(self, what: str, produce: Callable[[], Iterable[Metric]]) -> Iterable[Metric]:
        try:
            metrics = list(produce())
        except Exception:
            logger.warning("collecting %s metrics failed", what, exc_info=True)
            return []
        return metrics

    def _build_info(self) -> Iterable[Metric]:
        info = GaugeMetricFamily(
            "peer_ring_kv_info",
            "Version and address of this node (value is always 1).",
            labels=("version", "address"),
        )
        info.add_metric((__version__, self._store.node.address), 1.0)
        yield info
        yield GaugeMetricFamily(
            "peer_ring_ready",
            "1 when this node reports ready (/readyz), else 0.",
            value=1.0 if self._ready() else 0.0,
        )

    def _store_metrics(self) -> Iterable[Metric]:
        stats = self._store.stats()
        for name, value in sorted(stats.items()):
            number = _number(value)
            if number is None:
                continue
            if name in _STORE_GAUGES:
                metric_name, doc = _STORE_GAUGES[name]
                yield GaugeMetricFamily(metric_name, doc, value=number)
            elif name in _STORE_COUNTERS:
                metric_name, doc = _STORE_COUNTERS[name]
                yield CounterMetricFamily(metric_name, doc, value=number)
            else:
                yield GaugeMetricFamily(
                    f"peer_ring_kv_store_{_sanitize(name)}",
                    f"KVStore.stats()[{name!r}].",
                    value=number,
                )

    def _ring_metrics(self) -> Iterable[Metric]:
        node = self._store.node
        ring = node.ring
        yield GaugeMetricFamily(
            "peer_ring_members",
            "Members in this node's view of the cluster.",
            value=float(len(ring.members)),
        )
        yield GaugeMetricFamily(
            "peer_ring_suspected_peers",
            "Peers this node currently cannot reach.",
            value=float(len(node.membership.suspected)),
        )
        yield GaugeMetricFamily(
            "peer_ring_partitions", "Partitions of the ring.", value=float(ring.partitions)
        )
        yield GaugeMetricFamily(
            "peer_ring_owned_partitions",
            "Partitions whose primary owner is this node.",
            value=float(len(ring.partitions_of(node.address, 1))),
        )
        n = self._replication or node.config.replication
        yield GaugeMetricFamily(
            "peer_ring_replica_partitions",
            "Partitions this node replicates at the default replication.",
            value=float(len(ring.partitions_of(node.address, n))),
        )

    def _transport_metrics(self) -> Iterable[Metric]:
        # The transport's stats() is optional (not every transport has one yet); export
        # every numeric figure it reports, flat ones as-is and one-level mappings with a
        # `key` label (typically per peer).
        stats_fn = getattr(self._store.node.transport, "stats", None)
        if not callable(stats_fn):
            return
        stats: Any = stats_fn()
        if not isinstance(stats, Mapping):
            return
        for name, value in sorted(stats.items(), key=lambda kv: str(kv[0])):
            metric_name = f"peer_ring_transport_{_sanitize(str(name))}"
            number = _number(value)
            if number is not None:
                yield GaugeMetricFamily(metric_name, f"Transport statistic {name!r}.", number)
            elif isinstance(value, Mapping):
                family = GaugeMetricFamily(
                    metric_name, f"Transport statistic {name!r}, by key.", labels=("key",)
                )
                for key, inner in sorted(value.items(), key=lambda kv: str(kv[0])):
                    inner_number = _number(inner)
                    if inner_number is not None:
                        family.add_metric((str(key),), inner_number)
                yield family


def _number(value: object) -> float | None:
    # bool is an int subclass; True/False export fine as 1/0.
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _sanitize(name: str) -> str:
    cleaned = _NAME_UNSAFE.sub("_", name).strip("_").lower()
    return cleaned or "unnamed"
