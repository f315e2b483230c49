"""Parsing ``host:port`` gossip addresses (IPv6 as ``[::1]:7946``)."""

from __future__ import annotations

from peer_ring.core import InvalidArgumentError
from peer_ring.discovery.gossip._messages import Address

#: Gossip port used when an address names no port (memberlist's default).
DEFAULT_PORT = 7946


def parse_address(text: str, default_port: int | None = DEFAULT_PORT) -> Address:
    """``(host, port)`` of ``host:port`` (or of ``host`` with ``default_port``).

    Raises:
        InvalidArgumentError: malformed address or port.
    """
    value = text.strip()
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise InvalidArgumentError(f"bad address {text!r}")
        port_text = rest[1:]
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    elif ":" in value:
        raise InvalidArgumentError(f"write IPv6 hosts in brackets, like [::1]:7946: {text!r}")
    else:
        host, port_text = value, ""
    if not host:
        raise InvalidArgumentError(f"address {text!r} has no host")
    if not port_text:
        if default_port is None:
            raise InvalidArgumentError(f"address {text!r} has no port")
        return host, default_port
    if not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise InvalidArgumentError(f"address {text!r} has an invalid port")
    return host, int(port_text)


def format_address(addr: Address) -> str:
    """``host:port`` (brackets around IPv6 hosts)."""
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
