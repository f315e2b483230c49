"""Static discovery for peer-ring: a fixed list of ``host:port`` peers."""

from peer_ring.discovery.static.__about__ import __version__
from peer_ring.discovery.static._address import normalize_address, parse_address
from peer_ring.discovery.static._discovery import ENV_PEERS, ENV_SELF, StaticDiscovery

__all__ = [
    "ENV_PEERS",
    "ENV_SELF",
    "StaticDiscovery",
    "__version__",
    "normalize_address",
    "parse_address",
]
