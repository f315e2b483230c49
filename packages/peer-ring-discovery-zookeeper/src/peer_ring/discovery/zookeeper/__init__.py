"""ZooKeeper discovery for peer-ring: members are ephemeral znodes under one path, watched."""

from peer_ring.discovery.zookeeper.__about__ import __version__
from peer_ring.discovery.zookeeper._discovery import (
    DEFAULT_PATH,
    DEFAULT_SESSION_TIMEOUT,
    ZooKeeperDiscovery,
    ZooKeeperStats,
)
from peer_ring.discovery.zookeeper._errors import ZooKeeperDiscoveryError
from peer_ring.discovery.zookeeper._members import decode_member, encode_member
from peer_ring.discovery.zookeeper._serve import ENV_DIGEST, ENV_HOSTS, from_serve_options

__all__ = [
    "DEFAULT_PATH",
    "DEFAULT_SESSION_TIMEOUT",
    "ENV_DIGEST",
    "ENV_HOSTS",
    "ZooKeeperDiscovery",
    "ZooKeeperDiscoveryError",
    "ZooKeeperStats",
    "__version__",
    "decode_member",
    "encode_member",
    "from_serve_options",
]
