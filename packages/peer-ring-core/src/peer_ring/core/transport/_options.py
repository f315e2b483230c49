"""gRPC names and options of the peer-ring wire protocol (see ``proto/peer_ring.proto``).

Kept apart from the transport logic so that the wire constants (method paths, metadata keys)
and the tuning of gRPC channels and servers are reviewed in one place.
"""

from __future__ import annotations

import grpc.aio

from peer_ring.core.transport._base import TransportLimits

#: The end-of-stream marker ``read()`` returns (missing from the grpc-stubs package).
EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]

#: Fully qualified service name; must match ``package peer_ring.v1; service PeerRing``.
SERVICE = "peer_ring.v1.PeerRing"
EXCHANGE_METHOD = "Exchange"
TRANSFER_METHOD = "Transfer"
EXCHANGE_PATH = f"/{SERVICE}/{EXCHANGE_METHOD}"
TRANSFER_PATH = f"/{SERVICE}/{TRANSFER_METHOD}"

#: Call metadata carrying the opener's own peer address (its identity).
SENDER_KEY = "x-peer-ring-sender"
#: Call metadata carrying ``Bearer <token>`` when the cluster shares a token.
AUTHORIZATION_KEY = "authorization"
#: Initial metadata a server sends on an accepted Exchange, before any frame. The opener
#: waits for it, so "stream up" means the peer really accepted us (not just TCP connected).
ACCEPTED_KEY = "x-peer-ring-accepted"

#: gRPC refuses messages over its configured maximum. Frames are built to at most
#: ``max_message_bytes``; the headroom covers gRPC's own framing so that a frame of exactly
#: the limit is never refused by gRPC itself.
MESSAGE_HEADROOM = 64 * 1024


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def channel_options(limits: TransportLimits) -> list[tuple[str, int | str]]:
    """Options of the client channel to one peer."""
    size = limits.max_message_bytes + MESSAGE_HEADROOM
    return [
        ("grpc.max_send_message_length", size),
        ("grpc.max_receive_message_length", size),
        # Keepalive: ping every keepalive_time, give up after keepalive_timeout without an
        # answer. The Exchange stream is always open, so the pings also run while no frame
        # moves; max_pings_without_data=0 lifts gRPC's default cap of 2 such pings, which
        # would otherwise silently stop keepalive on an idle stream.
        ("grpc.keepalive_time_ms", _ms(limits.keepalive_time)),
        ("grpc.keepalive_timeout_ms", _ms(limits.keepalive_timeout)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # gRPC's own reconnect backoff (default: 1 s initial, 120 s max) would hold the
        # channel in TRANSIENT_FAILURE long after the peer is back; align it with ours.
        ("grpc.initial_reconnect_backoff_ms", _ms(limits.backoff_initial)),
        ("grpc.max_reconnect_backoff_ms", _ms(limits.backoff_max)),
        # Despite its name, gRPC core uses this as the *minimum connect timeout* of one
        # attempt (doc/connection-backoff.md, MIN_CONNECT_TIMEOUT): setting it to a small
        # backoff would abort slow handshakes. Our own connect_timeout also bounds a wait.
        ("grpc.min_reconnect_backoff_ms", _ms(limits.connect_timeout)),
        # Retries would buffer the frames of a stream; the transport fails and reconnects
        # on its own, so gRPC retries only add memory.
        ("grpc.enable_retries", 0),
        # By default channels to the same target share one TCP connection process-wide
        # (global subchannel pool). Several transports in one process (tests, simulations,
        # benchmarks) must not share connections: closing one would break the others.
        ("grpc.use_local_subchannel_pool", 1),
    ]


def server_options(limits: TransportLimits) -> list[tuple[str, int | str]]:
    """Options of the server that accepts peers."""
    size = limits.max_message_bytes + MESSAGE_HEADROOM
    return [
        # Two nodes bound to the same address would split the peers between them; with
        # SO_REUSEPORT off, the second bind fails loudly instead.
        ("grpc.so_reuseport", 0),
        ("grpc.max_send_message_length", size),
        ("grpc.max_receive_message_length", size),
        # The server pings too, so streams from peers that vanished are reclaimed.
        ("grpc.keepalive_time_ms", _ms(limits.keepalive_time)),
        ("grpc.keepalive_timeout_ms", _ms(limits.keepalive_timeout)),
        ("grpc.keepalive_permit_without_calls", 1),
        # Accept the clients' keepalive pings (default policy: at most one every 5 min
        # without data, then GOAWAY "too_many_pings"). Half the client interval tolerates
        # timer skew; 0 strikes = never punish a peer for pinging.
        ("grpc.http2.min_recv_ping_interval_without_data_ms", _ms(limits.keepalive_time / 2)),
        ("grpc.http2.min_ping_interval_without_data_ms", _ms(limits.keepalive_time / 2)),
        ("grpc.http2.max_ping_strikes", 0),
    ]
