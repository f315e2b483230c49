"""Admission of an inbound gRPC call (a base class of :class:`~._grpc.GrpcTransport`).

The order of the checks and what each refusal answers is documented in :mod:`._grpc`.
Every refusal is counted in the transport's stats and logged at WARNING, rate-limited per
kind of refusal.
"""

from __future__ import annotations

import hmac
from typing import Any

import grpc
import grpc.aio

from peer_ring.core.transport._base import InboundHandler
from peer_ring.core.transport._grpc_errors import OVERLOADED_DETAILS
from peer_ring.core.transport._identity import claim_refusal
from peer_ring.core.transport._log import RateLimitedLog
from peer_ring.core.transport._options import AUTHORIZATION_KEY, SENDER_KEY
from peer_ring.core.transport._stats import TransportStats
from peer_ring.core.transport._tls import TLSConfig

#: Why a call is refused: the status and its details.
Refusal = tuple[grpc.StatusCode, str]


class Admission:
    """Admission checks; the fields below are set by ``GrpcTransport.__init__``."""

    _address: str
    _expected_auth: bytes | None
    _tls: TLSConfig | None
    _stats: TransportStats
    _refusal_log: RateLimitedLog
    _running: bool
    _on_request: InboundHandler | None

    def _admit(self, context: grpc.aio.ServicerContext[Any, Any], method: str) -> str | Refusal:
        """Return the sender's address, or why the call is refused (counted and logged)."""
        sender = ""
        auth = ""
        for key, value in context.invocation_metadata() or ():
            if key == SENDER_KEY:
                sender = str(value)
            elif key == AUTHORIZATION_KEY:
                auth = str(value)
        # Constant-time comparison (of bytes: compare_digest refuses non-ASCII str), so the
        # time a refusal takes tells nothing about how much of the token was right.
        if self._expected_auth is not None and not hmac.compare_digest(
            auth.encode("utf-8", "surrogateescape"), self._expected_auth
        ):
            self._stats.refused_connections += 1
            kind = "wrong" if auth else "missing"
            self._refusal_log.warning(
                (method, kind),
                "refused %s from %s (%s): %s token",
                method,
                sender or "unknown sender",
                context.peer(),
                kind,
            )
            return (grpc.StatusCode.UNAUTHENTICATED, "missing or wrong cluster token")
        if not sender:
            self._stats.refused_connections += 1
            self._refusal_log.warning(
                (method, "sender"),
                "refused %s from %s: no %s metadata",
                method,
                context.peer(),
                SENDER_KEY,
            )
            return (grpc.StatusCode.INVALID_ARGUMENT, f"missing {SENDER_KEY} metadata")
        if self._tls is not None and self._tls.require_client_auth:
            sans = context.auth_context().get("x509_subject_alternative_name", ())
            names = [bytes(n).decode("utf-8", "replace") for n in sans]
            if (why := claim_refusal(sender, names, self._tls.server_name)) is not None:
                self._stats.refused_connections += 1
                args = (method, context.peer(), why)
                self._refusal_log.warning((method, "identity"), "refused %s from %s: %s", *args)
                return (grpc.StatusCode.PERMISSION_DENIED, f"peer identity: {why}")
        if not self._running or self._on_request is None:
            return (grpc.StatusCode.UNAVAILABLE, "node is stopping")
        return sender

    def _overloaded(
        self, method: str, sender: str, context: Any, limit: str, value: int
    ) -> Refusal:
        self._stats.refused_overload += 1
        self._refusal_log.warning(
            (method, "overload"),
            "refused %s from %s (%s): %s=%d reached",
            method,
            sender,
            context.peer(),
            limit,
            value,
        )
        return (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{OVERLOADED_DETAILS} node {self._address} serves {limit}={value} "
            f"{method} calls already; retry later",
        )
