"""Counters of a transport, exported by ``GrpcTransport.stats()`` (for metrics)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from peer_ring.core.transport._outbound import PeerConnection


@dataclass(slots=True)
class TransportStats:
    """Monotonic counters; plain attributes so the hot path pays one integer add.

    Attributes:
        frames_sent / frames_received: stream messages (each carries many operations).
        requests_sent / requests_received: requests written to / read from streams.
        responses_sent / responses_received: responses written / read (matched or late).
        cancels_sent / cancels_received: abandoned-request notices.
        late_responses: responses whose request was already answered, timed out or cancelled.
        timeouts: requests failed with ``RequestTimeoutError``.
        overloaded: requests refused with ``OverloadedError`` (peer queue full).
        oversized_requests: requests refused with ``MessageTooLargeError``.
        oversized_responses: responses replaced by a ``TOO_LARGE`` error response.
        unavailable: requests failed with ``PeerUnavailableError``.
        handler_errors: inbound requests whose handler raised.
        malformed_frames: inbound frames that could not be parsed (the stream is ended).
        refused_connections: inbound calls refused because the caller is not admitted:
            missing or wrong token, or no sender metadata (UNAUTHENTICATED /
            INVALID_ARGUMENT). TLS handshakes that fail (no certificate, another CA) are
            refused by gRPC core before any call exists: see ``tls_handshakes``.
        refused_overload: inbound calls refused with RESOURCE_EXHAUSTED because
            ``max_inbound_streams`` or ``max_inbound_transfers`` was reached.
        inbound_timeouts: inbound requests whose handler was still running at the
            request's (clamped) deadline: cancelled and answered with TIMEOUT.
        backpressure_pauses: times an inbound stream stopped being read because its
            unsent responses or running handlers reached their bound (a slow or
            non-reading client).
        tls_handshakes: TLS handshakes the server started (gRPC asks for the certificate
            once per new connection). Those not followed by a call are mostly refused
            handshakes; gRPC core logs each refusal (``Handshake failed ...``).
        certificate_reloads: times changed certificate files were loaded.
        inbound_streams: inbound Exchange streams accepted.
        streams_opened: outbound Exchange streams established.
        stream_failures: outbound streams that broke after being established.
        connect_failures: failed attempts to establish an outbound stream.
        transfers_sent / transfers_received: Transfer RPCs served / made.
        direct_frames: frames (among ``frames_sent``) written at once by the code that
            had them, without waking the connection's writer task (TCP transport: a lone
            request, answers served in the turn their request arrived).
    """

    frames_sent: int = 0
    frames_received: int = 0
    requests_sent: int = 0
    requests_received: int = 0
    responses_sent: int = 0
    responses_received: int = 0
    cancels_sent: int = 0
    cancels_received: int = 0
    late_responses: int = 0
    timeouts: int = 0
    overloaded: int = 0
    oversized_requests: int = 0
    oversized_responses: int = 0
    unavailable: int = 0
    handler_errors: int = 0
    malformed_frames: int = 0
    refused_connections: int = 0
    refused_overload: int = 0
    inbound_timeouts: int = 0
    backpressure_pauses: int = 0
    tls_handshakes: int = 0
    certificate_reloads: int = 0
    inbound_streams: int = 0
    streams_opened: int = 0
    stream_failures: int = 0
    connect_failures: int = 0
    transfers_sent: int = 0
    transfers_received: int = 0
    direct_frames: int = 0
    direct_requests: int = 0

    def as_dict(self) -> dict[str, int]:
        """A snapshot of every counter."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def peer_figures(peers: Mapping[str, PeerConnection]) -> dict[str, dict[str, float]]:
    """Per peer: requests ``in_flight`` (written, unanswered) and ``pending`` (queued or in
    flight), and ``latency_seconds``, the moving average of sampled round trips (absent
    before the first sample)."""
    out: dict[str, dict[str, float]] = {}
    for peer, conn in peers.items():
        in_flight, pending = conn.load()
        out[peer] = {"in_flight": in_flight, "pending": pending}
        if conn.latency is not None:
            out[peer]["latency_seconds"] = conn.latency
    return out
