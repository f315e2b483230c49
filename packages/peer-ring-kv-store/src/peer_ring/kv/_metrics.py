"""Prometheus metrics of one ``peer-ring-kv serve`` node (``GET /metrics``).

Each :class:`KVMetrics` owns its own :class:`~prometheus_client.CollectorRegistry` instead of
the process-global one: several stores in one process (tests, an application embedding two
clusters) must not collide on metric names, and a store that stops must take its metrics
with it.

Two kinds of metrics:

- HTTP request counters and latency histograms, updated as requests finish.
- Store figures, read *at scrape time* from ``store.stats()`` by a custom collector, so
  that the hot path of the store pays nothing for them and they are never stale.
- The node's ring, data-movement and transport figures: the core's own collector
  (:class:`peer_ring.core.metrics.PeerRingCollector`, also read at scrape time) registered
  on the same registry.
- The process's garbage collector: ``prometheus_client``'s ``python_gc_*`` counters and the
  settings ``serve --gc-threshold`` / ``--gc-freeze-after-start`` put in effect (these are
  the whole process's, whichever store's registry shows them).
"""

from __future__ import annotations

import gc
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, GCCollector, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from peer_ring.core import PeerRing
from peer_ring.core.metrics import PeerRingCollector
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
        replication: unused, kept for compatibility (the core collector counts replica
            partitions at the node's configured replication).
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
        self.registry.register(_NodeCollector(store, ready))
        self.registry.register(PeerRingCollector(store.node))
        GCCollector(registry=self.registry)  # python_gc_*: collections per generation
        self.registry.register(_GcSettingsCollector())

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
    """Reads the store's figures when Prometheus scrapes (the node's: the core collector)."""

    def __init__(self, store: _StoreLike, ready: Callable[[], bool]) -> None:
        self._store = store
        self._ready = ready

    def collect(self) -> Iterable[Metric]:
        # A scrape must never fail because one source misbehaves: each block is guarded,
        # and a broken source only loses its own metrics (with a log line to explain it).
        yield from self._guarded("build", self._build_info)
        yield from self._guarded("store", self._store_metrics)

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


class _GcSettingsCollector:
    """The garbage-collector settings in effect (``serve --gc-threshold``,
    ``--gc-freeze-after-start``), read at scrape time, so an operator can see them applied."""

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "peer_ring_kv_gc_threshold",
            "Python's young-generation collection threshold in effect (700 unless --gc-threshold).",
            value=float(gc.get_threshold()[0]),
        )
        yield GaugeMetricFamily(
            "peer_ring_kv_gc_frozen_objects",
            "Objects gc.freeze() moved out of the collector's reach (0 unless "
            "--gc-freeze-after-start).",
            value=float(gc.get_freeze_count()),
        )


#: The collector of a store's figures (public name; see :mod:`peer_ring.kv.metrics`).
StoreCollector = _NodeCollector


def _number(value: object) -> float | None:
    # bool is an int subclass; True/False export fine as 1/0.
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _sanitize(name: str) -> str:
    cleaned = _NAME_UNSAFE.sub("_", name).strip("_").lower()
    return cleaned or "unnamed"
