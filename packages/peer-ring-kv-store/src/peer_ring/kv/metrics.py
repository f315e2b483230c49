"""Prometheus metrics of an embedded :class:`~peer_ring.kv.KVStore`, on your own registry.

Needs ``prometheus-client`` (``pip install 'peer-ring-kv-store[serve]'`` or install it
yourself). The figures are read at scrape time: registering costs the store nothing.

Example (FastAPI / any ASGI app)::

    from prometheus_client import make_asgi_app
    from peer_ring.kv.metrics import register_metrics

    register_metrics(kv)                       # the default REGISTRY, or registry=...
    app.mount("/metrics", make_asgi_app())
    app.get("/cluster")(lambda: kv.cluster_status())
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.registry import Collector

from peer_ring.core.metrics import PeerRingCollector
from peer_ring.kv._metrics import KVMetrics, StoreCollector, _StoreLike

__all__ = ["KVMetrics", "StoreCollector", "register_metrics"]


def register_metrics(
    store: _StoreLike, registry: CollectorRegistry | None = None, *, ready: bool = True
) -> list[Collector]:
    """Register the store's metrics (``peer_ring_kv_*``: keys, bytes, evictions,
    expiries, read repairs...) and its node's (``peer_ring_*``: members, partitions,
    hints, handoffs, transport) on ``registry``.

    Args:
        store: the store.
        registry: where to register (default: ``prometheus_client.REGISTRY``).
        ready: also export ``peer_ring_ready`` from the store's ``ready`` flag.

    Returns:
        The collectors, for ``registry.unregister`` when the store is gone.

    Raises:
        ValueError: the registry already has metrics of these names (another store); a
            registry detects it when created with ``auto_describe=True``, as the default
            ``REGISTRY`` is.
    """
    target = REGISTRY if registry is None else registry
    flag = getattr(store, "ready", None)

    def is_ready() -> bool:
        return bool(flag() if callable(flag) else getattr(store, "ready", True))

    collectors: list[Collector] = [
        StoreCollector(store, is_ready if ready else (lambda: True)),
        PeerRingCollector(store.node),
    ]
    registered: list[Collector] = []
    try:
        for collector in collectors:
            target.register(collector)
            registered.append(collector)
    except ValueError:
        for collector in registered:
            target.unregister(collector)
        raise
    return collectors
