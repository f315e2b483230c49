"""Prometheus metrics of a node (optional extra: ``pip install peer-ring-core[metrics]``).

Example:
    >>> from prometheus_client import CollectorRegistry, generate_latest
    >>> from peer_ring.core.metrics import register_metrics
    >>> registry = register_metrics(node)              # doctest: +SKIP
    >>> text = generate_latest(registry)               # doctest: +SKIP

Every figure is read from the node when Prometheus scrapes (see the core README, section
"Metrics and traces", for the list).
"""

from peer_ring.core._metrics import PeerRingCollector, register_metrics

__all__ = ["PeerRingCollector", "register_metrics"]
