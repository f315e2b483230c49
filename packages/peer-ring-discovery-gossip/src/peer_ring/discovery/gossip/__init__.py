"""SWIM gossip discovery with Lifeguard for peer-ring: membership without a registry.

``GossipDiscovery(bind=..., seeds=[...], self_address=...)`` implements the core's
``Discovery`` protocol. The protocol itself is the pure state machine :class:`Swim`
(no I/O; driven by messages and timer ticks), run on asyncio UDP/TCP by the discovery and on
virtual time by :mod:`peer_ring.discovery.gossip.testing`.
"""

from peer_ring.discovery.gossip.__about__ import __version__
from peer_ring.discovery.gossip._address import DEFAULT_PORT, format_address, parse_address
from peer_ring.discovery.gossip._config import GossipConfig
from peer_ring.discovery.gossip._discovery import GossipDiscovery
from peer_ring.discovery.gossip._keyring import Keyring
from peer_ring.discovery.gossip._membership import initial_incarnation
from peer_ring.discovery.gossip._messages import Address, Status
from peer_ring.discovery.gossip._outputs import (
    EventKind,
    MemberEvent,
    OpenStream,
    SendPacket,
    StreamPing,
)
from peer_ring.discovery.gossip._packet import BadPacketError, PacketCodec
from peer_ring.discovery.gossip._protocol import Swim
from peer_ring.discovery.gossip._serve import ENV_KEY, from_serve_options

__all__ = [
    "DEFAULT_PORT",
    "ENV_KEY",
    "Address",
    "BadPacketError",
    "EventKind",
    "GossipConfig",
    "GossipDiscovery",
    "Keyring",
    "MemberEvent",
    "OpenStream",
    "PacketCodec",
    "SendPacket",
    "Status",
    "StreamPing",
    "Swim",
    "__version__",
    "format_address",
    "from_serve_options",
    "initial_incarnation",
    "parse_address",
]
