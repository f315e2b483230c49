"""Channels of the gRPC transport to its peers, and how they are renewed."""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc
import grpc.aio

from peer_ring.core.transport._base import TransportLimits
from peer_ring.core.transport._options import channel_options
from peer_ring.core.transport._tls import ClientCredentials, TLSConfig

logger = logging.getLogger(__name__)

#: ``renew(force)``: a new channel to use instead of the current one, or None.
RenewFn = Callable[[bool], grpc.aio.Channel | None]


def open_channel(
    peer: str,
    limits: TransportLimits,
    credentials: grpc.ChannelCredentials | None,
    client_tls: ClientCredentials | None,
    tls: TLSConfig | None,
) -> tuple[grpc.aio.Channel, RenewFn]:
    """A channel to ``peer``, and how to renew it: ``renew(force)`` returns a new channel
    after a TLS rotation, or always when ``force`` (a channel in gRPC's own reconnect
    backoff fails fast until it ends; a new one connects at once).

    Args:
        peer: the peer's ``host:port``.
        limits: the transport's bounds (channel options).
        credentials: fixed channel credentials, or None (plain text unless ``client_tls``).
        client_tls: credentials from certificate files reloaded at run time, or None.
        tls: the TLS configuration of ``client_tls`` (its server name).
    """
    if client_tls is None:
        options = channel_options(limits)

        def make() -> grpc.aio.Channel:
            if credentials is not None:
                return grpc.aio.secure_channel(peer, credentials, options)
            return grpc.aio.insecure_channel(peer, options)

        def renew_plain(force: bool) -> grpc.aio.Channel | None:
            return make() if force else None

        return make(), renew_plain
    assert tls is not None
    options = channel_options(limits, tls.server_name)
    version, current = client_tls.current()

    def renew(force: bool) -> grpc.aio.Channel | None:
        # Called before each reconnect: a channel keeps the credentials it was built
        # with, so new files need a new channel (the old one is closed by the caller).
        nonlocal version
        latest, fresh = client_tls.current()
        if latest == version and not force:
            return None
        version = latest
        logger.info("TLS files changed: new channel to %s", peer)
        return grpc.aio.secure_channel(peer, fresh, options)

    return grpc.aio.secure_channel(peer, current, options), renew
