"""etcd v3 discovery for peer-ring: registration under a lease, list + watch, recovery.

::

    from peer_ring.discovery.etcd import EtcdDiscovery

    discovery = EtcdDiscovery(self_address="10.0.0.5:7100", endpoints="10.0.0.2:2379")
"""

from peer_ring.discovery.etcd.__about__ import __version__
from peer_ring.discovery.etcd._backoff import Backoff
from peer_ring.discovery.etcd._client import EtcdClient
from peer_ring.discovery.etcd._discovery import DEFAULT_TTL, EtcdDiscovery, EtcdDiscoveryStatus
from peer_ring.discovery.etcd._errors import (
    EtcdCompactedError,
    EtcdDiscoveryError,
    EtcdError,
    EtcdRejectedError,
    EtcdUnavailableError,
)
from peer_ring.discovery.etcd._lease import LeaseState, LeaseTracker
from peer_ring.discovery.etcd._members import DEFAULT_PREFIX, normalize_prefix
from peer_ring.discovery.etcd._registrar import RegistrationStats
from peer_ring.discovery.etcd._serve import from_serve_options, option_help
from peer_ring.discovery.etcd._watcher import WatchStats

__all__ = [
    "DEFAULT_PREFIX",
    "DEFAULT_TTL",
    "Backoff",
    "EtcdClient",
    "EtcdCompactedError",
    "EtcdDiscovery",
    "EtcdDiscoveryError",
    "EtcdDiscoveryStatus",
    "EtcdError",
    "EtcdRejectedError",
    "EtcdUnavailableError",
    "LeaseState",
    "LeaseTracker",
    "RegistrationStats",
    "WatchStats",
    "__version__",
    "from_serve_options",
    "normalize_prefix",
    "option_help",
]
