"""How members are stored in etcd: one key per node under a prefix, JSON values.

Key ``<prefix><host:port>`` (the address is the node's identity, so two registrations of
one address are one member), value ``{"address": "host:port", "metadata": {...}}``. The
key is authoritative: a value that does not decode still makes a member (without
metadata), so a newer writer's format never hides a live node; keys that are not a
``host:port`` are not members and are ignored.

Pure functions, no I/O.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from peer_ring.core import InvalidArgumentError, Member

logger = logging.getLogger(__name__)

#: Where members live when no prefix is given.
DEFAULT_PREFIX = "/peer-ring/default/"

_FORBIDDEN_PREFIX_CHARS = frozenset(" \t\r\n\x00")


def normalize_prefix(prefix: str) -> str:
    """Check a key prefix and return it ending with ``/``.

    Raises:
        InvalidArgumentError: empty, not starting with ``/``, the whole keyspace (``/``),
            containing whitespace or NUL, or an empty path segment (``//``).
    """
    if not isinstance(prefix, str) or not prefix:
        raise InvalidArgumentError(f"etcd prefix must be a non-empty string, got {prefix!r}")
    if not prefix.startswith("/"):
        raise InvalidArgumentError(
            f"etcd prefix {prefix!r} must start with '/' (for example {DEFAULT_PREFIX!r})"
        )
    if _FORBIDDEN_PREFIX_CHARS & set(prefix):
        raise InvalidArgumentError(f"etcd prefix {prefix!r} contains whitespace or NUL")
    if not prefix.endswith("/"):
        prefix += "/"
    if prefix == "/":
        raise InvalidArgumentError(
            "etcd prefix '/' is the whole keyspace: every key in etcd would be read as a member"
        )
    if "//" in prefix:
        raise InvalidArgumentError(f"etcd prefix {prefix!r} has an empty segment ('//')")
    return prefix


def check_address(address: str) -> str:
    """Return ``address`` when it is ``host:port`` (``[v6]:port`` for IPv6).

    Raises:
        InvalidArgumentError: anything else.
    """
    host, sep, port = address.rpartition(":")
    if (
        not sep
        or not host
        or not port.isdigit()
        or not 0 < int(port) < 65536
        or any(c.isspace() or c == "/" for c in address)
    ):
        raise InvalidArgumentError(f"{address!r} is not a host:port address")
    return address


def member_key(prefix: str, address: str) -> bytes:
    """The etcd key of the member ``address`` under a normalized ``prefix``."""
    return f"{prefix}{address}".encode()


def encode_member(member: Member) -> bytes:
    """The etcd value of ``member``: compact, key-sorted JSON."""
    body = {"address": member.address, "metadata": dict(sorted(member.metadata.items()))}
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def check_metadata(metadata: Mapping[str, str]) -> MappingProxyType[str, str]:
    """Return a read-only copy of ``metadata``.

    Raises:
        InvalidArgumentError: a key or value is not a string.
    """
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidArgumentError(f"metadata must map str to str, got {key!r}: {value!r}")
    return MappingProxyType(dict(metadata))


def decode_member(prefix: str, key: bytes, value: bytes) -> Member | None:
    """The member stored at ``key``, or None when the key is not a member's.

    The address comes from the key; metadata from the value when it decodes.
    """
    try:
        text = key.decode()
    except UnicodeDecodeError:
        return None
    if not text.startswith(prefix):
        return None
    address = text[len(prefix) :]
    try:
        check_address(address)
    except InvalidArgumentError:
        logger.debug("etcd discovery: ignoring %r under the prefix (not host:port)", text)
        return None
    metadata: dict[str, str] = {}
    try:
        body = json.loads(value)
        raw = body.get("metadata", {}) if isinstance(body, dict) else {}
        if isinstance(raw, dict):
            metadata = {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, str)}
    except ValueError:
        logger.debug("etcd discovery: value of %r is not JSON; member without metadata", text)
    return Member(address, MappingProxyType(metadata))


def snapshot_key(members: Iterable[Member]) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    """A comparable form of a member set including metadata (``Member`` equality ignores it)."""
    return tuple(sorted((m.address, tuple(sorted(m.metadata.items()))) for m in members))
