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
#: Shared frames (see :mod:`._grpc_shared`): the opener of an Exchange offers them with this
#: call metadata (value: its instance id, a random token per transport); a server that
#: agrees answers it in its initial metadata with its own instance id, and only then does
#: the opener put its answers to the server's requests on that stream.
SHARED_FRAMES_KEY = "x-peer-ring-shared-frames"

#: gRPC refuses messages over its configured maximum. Frames are built to at most
#: ``max_message_bytes``; the headroom covers gRPC's own framing so that a frame of exactly
#: the limit is never refused by gRPC itself.
MESSAGE_HEADROOM = 64 * 1024


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def channel_options(
    limits: TransportLimits, server_name: str | None = None
) -> list[tuple[str, int | str]]:
    """Options of the client channel to one peer.

    Args:
        limits: the transport's bounds.
        server_name: with TLS, the name the peers' certificates are checked against
            instead of the address dialled (see ``TLSConfig.server_name``).
    """
    size = limits.max_message_bytes + MESSAGE_HEADROOM
    options: list[tuple[str, int | str]] = [
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
    if server_name:
        # Peers are dialled by IP:port; without an IP SAN in every certificate, TLS needs
        # one shared name to verify instead (gRPC also sends it as SNI and :authority).
        options.append(("grpc.ssl_target_name_override", server_name))
    return options


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
        # Keepalive *enforcement*: accept the peers' pings (gRPC's default policy allows one
        # every 5 min without data), but no more often than half their interval (half
        # tolerates timer skew). A client that pings faster (a ping flood costs the server
        # a write each) gets GOAWAY "too_many_pings" after 2 strikes, gRPC's default.
        ("grpc.http2.min_recv_ping_interval_without_data_ms", _ms(limits.keepalive_time / 2)),
        ("grpc.http2.min_ping_interval_without_data_ms", _ms(limits.keepalive_time / 2)),
        ("grpc.http2.max_ping_strikes", MAX_PING_STRIKES),
        # HTTP/2 streams (calls) one connection may have open; gRPC's default is unlimited.
        ("grpc.max_concurrent_streams", limits.max_concurrent_streams),
        # A connection must finish its TLS/HTTP2 handshakes within this (default 120 s):
        # sockets opened by a connection flood, which never speak, are reclaimed quickly.
        ("grpc.server_handshake_timeout_ms", _ms(limits.handshake_timeout)),
        *_connection_lifetime(limits),
    ]


#: Pings without data a client may send too early before it gets GOAWAY (gRPC's default).
MAX_PING_STRIKES = 2


def _connection_lifetime(limits: TransportLimits) -> list[tuple[str, int | str]]:
    options: list[tuple[str, int | str]] = []
    if limits.max_connection_idle is not None:
        options.append(("grpc.max_connection_idle_ms", _ms(limits.max_connection_idle)))
    if limits.max_connection_age is not None:
        options += [
            ("grpc.max_connection_age_ms", _ms(limits.max_connection_age)),
            ("grpc.max_connection_age_grace_ms", _ms(limits.max_connection_age_grace)),
        ]
    return options
