"""Prometheus metrics of a :class:`~peer_ring.pubsub.PubSub` node (extra ``[metrics]``).

:class:`PubSubCollector` reads :meth:`PubSub.metrics` when Prometheus scrapes (the publish
and delivery paths pay nothing); :func:`register_metrics` puts it on a registry together
with the core's collector of the node (:mod:`peer_ring.core.metrics`), the same mechanism the
KV store and the rate limiter use.

Example:
    >>> from prometheus_client import generate_latest
    >>> from peer_ring.pubsub.metrics import register_metrics
    >>> registry = register_metrics(pubsub)        # doctest: +SKIP
    >>> text = generate_latest(registry)           # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from peer_ring.core.metrics import PeerRingCollector

if TYPE_CHECKING:
    from peer_ring.pubsub._pubsub import PubSub

logger = logging.getLogger(__name__)

_COUNTERS = {
    "published": "Messages published through this node.",
    "takeovers": "Partitions this node took over as sequencer.",
    "step_downs": "Times this node stopped sequencing a partition.",
    "retries": "Client requests retried (sequencer moved or unreachable).",
    "expired_unread": "Messages removed by retention before any group read them.",
    "dead_lettered": "Messages moved to a dead-letter topic.",
}
_GAUGES = {
    "sequencing": "Partitions this node sequences now.",
    "partitions_held": "Topic partitions whose log this node holds.",
    "stalled_subscriptions": "Local subscriptions at max_in_flight with nothing settled "
    "for longer than ack_wait.",
}
_SUBSCRIPTION_COUNTERS = ("delivered", "acked", "redelivered", "expired", "errors")


class PubSubCollector:
    """Exports one :class:`PubSub` node's counters and its subscriptions' health.

    Args:
        pubsub: the pub-sub node (read at scrape time).
    """

    def __init__(self, pubsub: PubSub) -> None:
        self._pubsub = pubsub

    def collect(self) -> Iterable[Metric]:
        """The metrics, computed now (called by ``prometheus_client`` on each scrape)."""
        try:
            snapshot = self._pubsub.metrics()
        except Exception:  # a scrape never fails; the log line explains the gap
            logger.warning("collecting pub-sub metrics failed", exc_info=True)
            return
        for name, doc in _COUNTERS.items():
            yield CounterMetricFamily(f"peer_ring_pubsub_{name}", doc, value=snapshot[name])
        for name, doc in _GAUGES.items():
            yield GaugeMetricFamily(f"peer_ring_pubsub_{name}", doc, value=snapshot[name])
        yield from _subscriptions(snapshot.get("subscriptions", []))


def _subscriptions(health: Iterable[Any]) -> Iterable[Metric]:
    labels = ("topic", "group", "consumer")
    in_flight = GaugeMetricFamily(
        "peer_ring_pubsub_subscription_in_flight",
        "Messages delivered to a local subscription and not settled yet.",
        labels=labels,
    )
    stalled = GaugeMetricFamily(
        "peer_ring_pubsub_subscription_stalled",
        "1 when a local subscription is stalled (see peer_ring_pubsub_stalled_subscriptions).",
        labels=labels,
    )
    counters = {
        name: CounterMetricFamily(
            f"peer_ring_pubsub_subscription_{name}",
            f"Messages {name} by a local subscription."
            if name != "errors"
            else "Handler errors of a local subscription.",
            labels=labels,
        )
        for name in _SUBSCRIPTION_COUNTERS
    }
    for h in health:
        key = (h.topic, h.group or "", h.consumer or "")
        in_flight.add_metric(key, h.in_flight)
        stalled.add_metric(key, 1.0 if h.stalled else 0.0)
        for name, family in counters.items():
            family.add_metric(key, getattr(h, name))
    yield in_flight
    yield stalled
    yield from counters.values()


def register_metrics(
    pubsub: PubSub,
    registry: CollectorRegistry | None = None,
    *,
    include_node: bool = True,
) -> CollectorRegistry:
    """Register ``pubsub``'s metrics (and its node's) on ``registry`` and return it.

    Args:
        pubsub: the pub-sub node.
        registry: where to register (a new private registry when not given).
        include_node: also register the core collector of ``pubsub.node``. Pass False when
            the node is shared and its collector is already on this registry (the KV
            store's or the rate limiter's registry, or :func:`peer_ring.core.metrics.
            register_metrics`): the same series must not be exported twice.

    Returns:
        The registry, for ``prometheus_client.generate_latest(registry)``.
    """
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
    registry.register(PubSubCollector(pubsub))
    if include_node:
        registry.register(PeerRingCollector(pubsub.node))
    return registry
