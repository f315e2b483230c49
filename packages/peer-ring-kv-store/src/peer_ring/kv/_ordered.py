"""Writes ordered in real time whatever the clock skew: replicas refuse older versions.

Last-writer-wins on wall-clock-based versions loses an acknowledged write when the clock of
the node coordinating a *later* write is behind (Jepsen found it in Riak and Cassandra):
its version is lower, so the earlier write keeps winning. The HLC alone does not help,
since the later coordinator may never have seen the earlier version.

The rule here (docs/consistency.md):

* A replica asked to store a version lower than the one it holds for the key answers with
  the version it holds (a *refusal*; an ordinary acknowledgement is empty).
* The coordinator acknowledges a write only when its quorum answered without refusal. On a
  refusal it versions the write above the highest refused-with version and sends it again
  (at most :data:`MAX_ATTEMPTS` rounds, then :class:`QuorumNotReachedError`).

Write quorums intersect (W + W > N), so a write acknowledged after another acknowledged
write reached at least one replica holding the first one's version or higher, and was
versioned above it. No bound on the skew is needed for this; the HLC's drift guard only
limits how far a peer's timestamp moves this node's clock (a re-versioned write gets a
version just above the refused one without adopting it).
"""

from __future__ import annotations

from collections.abc import Iterable

from peer_ring.core import QuorumNotReachedError
from peer_ring.kv._hlc import HLC
from peer_ring.kv._record import Record
from peer_ring.kv._versions import MAX_LOGICAL, Version
from peer_ring.kv._wire import MalformedPayloadError

#: Rounds of re-versioning before a write gives up (each round follows a refusal: only a
#: steady stream of concurrent writes to the same key can use them up).
MAX_ATTEMPTS = 8


class WriteRefusedError(QuorumNotReachedError):
    """A write was refused :data:`MAX_ATTEMPTS` times by replicas holding newer versions.

    Only concurrent writers of the same key cause it; the write may be stored on some
    replicas (as any write that was not acknowledged). A subclass of
    ``QuorumNotReachedError``: the write did not reach a quorum at a winning version.
    """

    def __init__(self, key: bytes, quorum: int, succeeded: list[str]) -> None:
        super().__init__("kv", "set", quorum, succeeded, {})
        self.args = (
            f"kv/set of {key!r}: refused {MAX_ATTEMPTS} times by replicas holding newer "
            "versions (concurrent writers of the key)",
        )


def refusal(held: Record | None, record: Record) -> bytes:
    """The reply of a replica that did not store ``record`` because it holds ``held``.

    Returns:
        ``b""`` (an acknowledgement) unless ``held`` has a strictly higher version; then the
        encoded version of ``held``. Equal versions are the same write (a retry or a hint
        delivered twice), which is acknowledged.
    """
    if held is None or held.version <= record.version:
        return b""
    return held.version.to_bytes()


def newest_refusal(payloads: Iterable[bytes]) -> Version | None:
    """The highest version replicas refused a write with, or ``None`` if none refused.

    Empty payloads are acknowledgements (also what replicas of older releases answer).
    A payload that does not decode is ignored (treated as an acknowledgement).
    """
    newest: Version | None = None
    for payload in payloads:
        if not payload:
            continue
        try:
            version = Version.from_bytes(payload)
        except MalformedPayloadError:
            continue
        if newest is None or version > newest:
            newest = version
    return newest


def version_above(hlc: HLC, newer: Version) -> Version:
    """A version for this node's retry that is above ``newer``.

    The HLC adopts ``newer`` when its drift guard allows; otherwise (``newer`` is far in
    the future) the version is built just above ``newer`` without moving the clock.
    """
    hlc.update(newer)
    version = hlc.now()
    if version > newer:
        return version
    if newer.logical < MAX_LOGICAL:
        return Version(newer.physical, newer.logical + 1, hlc.node_id)
    return Version(newer.physical + 1, 0, hlc.node_id)


def reversioned(record: Record, version: Version) -> Record:
    """``record`` with ``version`` (value, expiry and tombstone flag unchanged)."""
    return record._replace(version=version)
