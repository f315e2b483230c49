"""Parsing and checking ``host:port`` peer addresses."""

from __future__ import annotations

import ipaddress

from peer_ring.core import InvalidArgumentError


def parse_address(address: str) -> tuple[str, int]:
    """Split and validate ``host:port`` (IPv6 as ``[::1]:7101``).

    Raises:
        InvalidArgumentError: not of the form ``host:port`` with a port in 1..65535.
    """
    text = address.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text:
        raise InvalidArgumentError(f"peer address {address!r} is not of the form host:port")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise InvalidArgumentError(f"peer address {address!r} has a bad IPv6 host") from None
    elif ":" in host:
        raise InvalidArgumentError(
            f"peer address {address!r}: write IPv6 hosts in brackets, like [::1]:7101"
        )
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidArgumentError(f"peer address {address!r} has an invalid port {port_text!r}")
    return host, int(port_text)


def normalize_address(address: str) -> str:
    """Validate ``address`` and return it without surrounding spaces."""
    parse_address(address)
    return address.strip()
