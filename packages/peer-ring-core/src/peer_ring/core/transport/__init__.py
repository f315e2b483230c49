"""Transports: how peer-ring nodes exchange requests, responses and bulk transfers.

:class:`Transport` is the contract the coordinator uses; :class:`GrpcTransport` is the
default implementation (wire spec: ``peer_ring/core/proto/peer_ring.proto``),
:class:`TcpTransport` the faster one (the same frames over plain TCP/TLS), and
``peer_ring.core.testing.MemoryTransport`` the in-process one.
"""

from peer_ring.core.transport._base import (
    InboundHandler,
    ReachabilityListener,
    TransferHandler,
    Transport,
    TransportLimits,
)
from peer_ring.core.transport._grpc import GrpcTransport
from peer_ring.core.transport._tcp import TcpTransport
from peer_ring.core.transport._tls import TLSConfig

__all__ = [
    "GrpcTransport",
    "InboundHandler",
    "ReachabilityListener",
    "TLSConfig",
    "TcpTransport",
    "TransferHandler",
    "Transport",
    "TransportLimits",
]
