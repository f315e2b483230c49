"""Versions: the timestamp every stored value carries.

A :class:`Version` is a hybrid-logical-clock timestamp (see :mod:`peer_ring.kv._hlc`)
plus the id of the node that wrote the value. Versions are totally ordered by
``(physical, logical, node_id)``: the node id is the last tie-breaker, so two replicas that
compare the same two versions always pick the same winner and last-writer-wins converges
(Dynamo, section 4.4, with an HLC instead of vector clocks).

Binary encoding (little-endian, 13 bytes + node id)::

    physical  u64   microseconds since the Unix epoch
    logical   u32   HLC counter within one physical tick
    node_len  u8    length of the node id in bytes
    node_id   node_len bytes, UTF-8
"""

from __future__ import annotations

import struct
from typing import NamedTuple

#: Fixed-size head of an encoded version: physical, logical, node id length.
VERSION_HEAD = struct.Struct("<QIB")
#: Longest node id a version can carry, in UTF-8 bytes (a ``host:port`` is far shorter).
MAX_NODE_ID_BYTES = 255
#: Largest logical counter; the HLC moves its physical part on instead of overflowing.
MAX_LOGICAL = 0xFFFF_FFFF
#: Largest physical time (microseconds).
MAX_PHYSICAL = 0xFFFF_FFFF_FFFF_FFFF


class Version(NamedTuple):
    """The version of one write: an HLC timestamp and the writer's node id.

    Being a tuple, versions compare with ``<``/``==`` field by field, in C, which keeps
    last-writer-wins merges cheap.

    Attributes:
        physical: wall-clock part, microseconds since the Unix epoch.
        logical: counter that orders events within one ``physical`` value.
        node_id: the writer's identity (its ``host:port``), the final tie-breaker.
    """

    physical: int
    logical: int
    node_id: str

    @property
    def wall_time(self) -> float:
        """The physical part in seconds since the epoch (comparable to ``Clock.time()``)."""
        return self.physical / 1_000_000

    def to_bytes(self) -> bytes:
        """Encode compactly (13 bytes + the node id).

        Raises:
            ValueError: a field is out of range (negative, or a node id over 255 bytes).
        """
        node = self.node_id.encode()
        if len(node) > MAX_NODE_ID_BYTES:
            raise ValueError(f"node id is {len(node)} bytes; at most {MAX_NODE_ID_BYTES}")
        if not (0 <= self.physical <= MAX_PHYSICAL and 0 <= self.logical <= MAX_LOGICAL):
            raise ValueError(f"version out of range: {self!r}")
        return VERSION_HEAD.pack(self.physical, self.logical, len(node)) + node

    @classmethod
    def from_bytes(cls, data: bytes) -> Version:
        """Decode what :meth:`to_bytes` produced; the whole of ``data`` must be one version.

        Raises:
            MalformedPayloadError: ``data`` is truncated, too long or not valid UTF-8.
        """
        # Imported here: _wire imports this module, and the error belongs with the wire code.
        from peer_ring.kv._wire import MalformedPayloadError

        head = VERSION_HEAD.size
        if len(data) < head:
            raise MalformedPayloadError(f"version: need {head} bytes, got {len(data)}")
        physical, logical, node_len = VERSION_HEAD.unpack_from(data)
        if len(data) != head + node_len:
            raise MalformedPayloadError(
                f"version: node id length {node_len} does not match {len(data) - head} bytes"
            )
        try:
            node_id = data[head:].decode()
        except UnicodeDecodeError as exc:
            raise MalformedPayloadError(f"version: node id is not UTF-8 ({exc})") from None
        return cls(physical, logical, node_id)


#: Lower than every real version (no writer has the empty node id at time zero).
ZERO_VERSION = Version(0, 0, "")
