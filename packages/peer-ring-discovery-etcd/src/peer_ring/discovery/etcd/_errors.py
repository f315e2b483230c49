"""Errors of the etcd discovery.

Every failure of a call to etcd surfaces as an :class:`EtcdError`; the background loops
retry them, ``start()`` turns them into a clear configuration error.
"""

from __future__ import annotations

from peer_ring.core import PeerRingError


class EtcdDiscoveryError(PeerRingError):
    """Base class of the etcd discovery's errors."""


class EtcdError(EtcdDiscoveryError):
    """A call to etcd failed."""


class EtcdUnavailableError(EtcdError):
    """etcd did not answer: refused, reset, or past the call's deadline."""


class EtcdRejectedError(EtcdError):
    """etcd answered with an error (authentication, invalid argument, ...)."""


class EtcdCompactedError(EtcdError):
    """A watch asked for a revision that etcd has already compacted.

    Attributes:
        compact_revision: the oldest revision etcd still has; the caller lists again.
    """

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted (etcd keeps revisions from {compact_revision})")
        self.compact_revision = compact_revision
