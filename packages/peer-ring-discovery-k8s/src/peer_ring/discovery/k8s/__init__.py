"""Kubernetes discovery for peer-ring.

Finds peers through the EndpointSlices of a headless Service (or Pods by label), with
readiness semantics that let pods starting together form one ring, and a list+watch loop
that survives API server restarts and 410 Gone::

    from peer_ring.discovery.k8s import KubernetesDiscovery

    discovery = KubernetesDiscovery.from_env(port=7101)  # POD_IP, POD_NAMESPACE, ...
"""

from peer_ring.discovery.k8s.__about__ import __version__
from peer_ring.discovery.k8s._backoff import Backoff
from peer_ring.discovery.k8s._discovery import (
    ENV_LABEL_SELECTOR,
    ENV_MODE,
    ENV_PEER_PORT,
    ENV_POD_IP,
    ENV_POD_NAME,
    ENV_POD_NAMESPACE,
    ENV_PORT_NAME,
    ENV_SERVICE,
    SERVICE_NAME_LABEL,
    KubernetesDiscovery,
    Mode,
)
from peer_ring.discovery.k8s._errors import KubernetesDiscoveryError, KubernetesForbiddenError
from peer_ring.discovery.k8s._members import (
    META_NODE,
    META_POD,
    META_ZONE,
    members_from_endpoint_slices,
    members_from_pods,
)
from peer_ring.discovery.k8s._reflector import REQUIRED_VERBS, WatchStats

__all__ = [
    "ENV_LABEL_SELECTOR",
    "ENV_MODE",
    "ENV_PEER_PORT",
    "ENV_POD_IP",
    "ENV_POD_NAME",
    "ENV_POD_NAMESPACE",
    "ENV_PORT_NAME",
    "ENV_SERVICE",
    "META_NODE",
    "META_POD",
    "META_ZONE",
    "REQUIRED_VERBS",
    "SERVICE_NAME_LABEL",
    "Backoff",
    "KubernetesDiscovery",
    "KubernetesDiscoveryError",
    "KubernetesForbiddenError",
    "Mode",
    "WatchStats",
    "__version__",
    "members_from_endpoint_slices",
    "members_from_pods",
]
