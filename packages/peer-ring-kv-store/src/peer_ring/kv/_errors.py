"""KV-specific errors (all are :class:`peer_ring.core.PeerRingError` subclasses)."""

from __future__ import annotations

from peer_ring.core import InvalidArgumentError


class ValueTooLargeError(InvalidArgumentError):
    """A value (after encoding) is larger than the store's ``max_value_bytes``."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"value of {size} bytes exceeds max_value_bytes={limit}")
        self.size = size
        self.limit = limit


class KeyTooLargeError(InvalidArgumentError):
    """A key is empty or longer than ``max_key_bytes``."""
