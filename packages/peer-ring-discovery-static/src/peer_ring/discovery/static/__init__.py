"""Static discovery for peer-ring: a fixed list of ``host:port`` peers, or a peers file."""

from peer_ring.discovery.static.__about__ import __version__
from peer_ring.discovery.static._address import normalize_address, parse_address
from peer_ring.discovery.static._discovery import ENV_PEERS, ENV_SELF, StaticDiscovery
from peer_ring.discovery.static._file import FileDiscovery, parse_peers_text

__all__ = [
    "ENV_PEERS",
    "ENV_SELF",
    "FileDiscovery",
    "StaticDiscovery",
    "__version__",
    "normalize_address",
    "parse_address",
    "parse_peers_text",
]
