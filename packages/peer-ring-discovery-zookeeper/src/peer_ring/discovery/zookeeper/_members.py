"""Pure functions: the znode layout of a member, path and address checks, snapshot keys.

Each member is one ephemeral znode ``<path>/<address>`` (for example
``/peer-ring/members/10.0.0.7:7101``) whose data is UTF-8 JSON::

    {"address": "10.0.0.7:7101", "metadata": {"zone": "eu-1a"}}

The node's *name* is the member's identity: one address, one node, so a restarted process
finds the node of its previous incarnation (``NodeExists``) instead of adding a duplicate.
The data carries the metadata (and repeats the address for humans using ``zkCli``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from peer_ring.core import InvalidArgumentError, Member

logger = logging.getLogger(__name__)

#: The version of the node data layout, written as ``"v"``; readers accept missing ``v``.
DATA_VERSION = 1


def validate_path(path: str) -> str:
    """Check a ZooKeeper path for the member nodes and return it.

    Raises:
        InvalidArgumentError: not absolute, trailing or double slash, ``.``/``..``
            components, control characters, or under the reserved ``/zookeeper``.
    """
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidArgumentError(f"path {path!r} must be absolute (start with '/')")
    if path == "/":
        raise InvalidArgumentError("path '/' is the root; use a folder such as /peer-ring/members")
    if path.endswith("/") or "//" in path:
        raise InvalidArgumentError(f"path {path!r} has an empty component (trailing or '//')")
    parts = path[1:].split("/")
    if any(p in (".", "..") for p in parts):
        raise InvalidArgumentError(f"path {path!r} has a '.' or '..' component")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in path):
        raise InvalidArgumentError(f"path {path!r} has a control character")
    if parts[0] == "zookeeper":
        raise InvalidArgumentError(f"path {path!r} is under /zookeeper, reserved by ZooKeeper")
    return path


def validate_address(address: str) -> str:
    """Check a ``host:port`` member address (``[v6]:port`` for IPv6) and return it stripped.

    Raises:
        InvalidArgumentError: empty host, bad port, or a character a znode name cannot hold.
    """
    text = address.strip() if isinstance(address, str) else ""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgumentError(f"address {address!r} is not host:port with a port 1..65535")
    if "/" in text or any(c.isspace() for c in text):
        raise InvalidArgumentError(f"address {address!r} has a '/' or whitespace")
    return text


def validate_metadata(metadata: Mapping[str, str] | None) -> Mapping[str, str]:
    """Copy metadata into a read-only mapping of strings.

    Raises:
        InvalidArgumentError: a key or value that is not a string, or an empty key.
    """
    items = dict(metadata or {})
    for key, value in items.items():
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise InvalidArgumentError(f"metadata {key!r}={value!r}: keys and values are strings")
    return MappingProxyType(items)


def encode_member(member: Member) -> bytes:
    """The data of a member's znode."""
    doc = {"v": DATA_VERSION, "address": member.address, "metadata": dict(member.metadata)}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def decode_member(name: str, data: bytes | None) -> Member | None:
    """The member a child node describes, or None when its name is not an address.

    The name is authoritative. Data that is missing, not JSON, or of another shape gives
    a member without metadata (logged at debug): a node written by an older or foreign
    writer still counts as a member, because dropping it would move data away from a live
    node.
    """
    try:
        address = validate_address(name)
    except InvalidArgumentError:
        return None
    try:
        doc = json.loads(data or b"")
        raw = doc.get("metadata") if isinstance(doc, dict) else None
        metadata = {str(k): str(v) for k, v in (raw or {}).items()}
    except (ValueError, AttributeError, TypeError):
        logger.debug(
            "member node %s has unreadable data %r; no metadata", name, data[:80] if data else data
        )
        metadata = {}
    return Member(address, MappingProxyType(metadata))


def snapshot_key(members: Iterable[Member]) -> frozenset[tuple[str, tuple[tuple[str, str], ...]]]:
    """A value that changes exactly when the member set or a member's metadata changes.

    :class:`~peer_ring.core.Member` equality ignores metadata, so comparing member sets
    alone would swallow a metadata change.
    """
    return frozenset((m.address, tuple(sorted(m.metadata.items()))) for m in members)
