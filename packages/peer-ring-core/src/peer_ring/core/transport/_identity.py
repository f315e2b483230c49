"""A peer's identity bound to its client certificate (mutual TLS).

A peer says who it is in the sender metadata (gRPC) or its HELLO (TCP): the ``host:port`` it
listens on, its identity in the ring. With mutual TLS the certificate proves only that the
peer belongs to the cluster; without a further check, a member holding a valid certificate
could claim another member's address (receive its hints, speak for it in handoffs). The rule
checked here, on every inbound stream or connection when ``TLSConfig.require_client_auth``:

- the host of the claimed ``host:port`` must be one of the certificate's subject alternative
  names: an IP SAN equal to the host (compared as addresses, so ``::1`` and
  ``0:0:0:0:0:0:0:1`` match) or a DNS SAN equal to it (case-insensitive);
- with ``TLSConfig.server_name`` (every certificate carries one shared DNS name), a
  certificate carrying that shared name is accepted for any claimed address: one certificate
  shared by all nodes cannot tell them apart. Give each node its own IP SAN to bind identities.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable


def claim_refusal(sender: str, names: Iterable[str], server_name: str | None) -> str | None:
    """Why a peer presenting a certificate with SANs ``names`` may not claim ``sender``.

    Args:
        sender: the claimed ``host:port`` (IPv6 as ``[::1]:7101``).
        names: the subject alternative names of the peer's certificate (IP SANs as text).
        server_name: ``TLSConfig.server_name``, the shared DNS name, or ``None``.

    Returns:
        ``None`` when the claim is allowed, else the reason to log and answer.
    """
    host = sender.rpartition(":")[0] if ":" in sender else sender
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    wanted = _normal(host)
    sans = {_normal(name) for name in names}
    if wanted in sans:
        return None
    if server_name is not None and _normal(server_name) in sans:
        return None
    listed = ", ".join(sorted(sans)) or "no subject alternative name"
    return f"claims to be {sender} but its certificate is for {listed}"


def names_of_peercert(cert: object) -> list[str]:
    """The SANs of an :meth:`ssl.SSLObject.getpeercert` dictionary, as text."""
    if not isinstance(cert, dict):
        return []
    return [str(value) for _, value in cert.get("subjectAltName", ())]


def _normal(name: str) -> str:
    text = name.strip()
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text.lower().rstrip(".")
