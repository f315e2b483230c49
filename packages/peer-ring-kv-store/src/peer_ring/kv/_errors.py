"""KV-specific errors (all are :class:`peer_ring.core.PeerRingError` subclasses).

Every bad argument is an :class:`~peer_ring.core.InvalidArgumentError` (``serve`` answers
400); the subclasses say which argument.
"""

from __future__ import annotations

from peer_ring.core import InvalidArgumentError


class ValueTooLargeError(InvalidArgumentError):
    """A value (after encoding) is larger than the store's ``max_value_bytes``."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"value of {size} bytes exceeds max_value_bytes={limit}")
        self.size = size
        self.limit = limit


class InvalidKeyError(InvalidArgumentError):
    """A key is not ``str``/``bytes``, is empty, or is not valid UTF-8."""


class KeyTooLargeError(InvalidKeyError):
    """A key is longer than ``MAX_KEY_BYTES`` (64 KiB)."""


class InvalidValueError(InvalidArgumentError, TypeError):
    """A value the store's codec cannot encode (also a ``TypeError``, as it was before)."""


class ClusterTooSmallError(InvalidArgumentError):
    """The requested replication and its quorum exceed the members of the ring."""
