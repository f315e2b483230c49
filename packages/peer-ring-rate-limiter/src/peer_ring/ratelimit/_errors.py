"""Typed errors of the rate limiter.

Every error a caller can provoke with bad input is a :class:`RateLimitError` and also a
``ValueError``, so code that already catches ``ValueError`` keeps working.
"""

from __future__ import annotations


class RateLimitError(Exception):
    """Base class of every error raised by ``peer_ring.ratelimit``."""


class InvalidLimitError(RateLimitError, ValueError):
    """A limit with a negative or zero count, a zero or negative period, or a bad burst."""


class UnknownAlgorithmError(RateLimitError, ValueError):
    """An algorithm name or wire id this version does not know."""


class KeyTooLongError(RateLimitError, ValueError):
    """A key longer than :data:`peer_ring.ratelimit.MAX_KEY_BYTES` once UTF-8 encoded."""


class InvalidCostError(RateLimitError, ValueError):
    """A cost that is not an integer or is outside ``[-MAX_COST, MAX_COST]``."""


class CorruptStateError(RateLimitError, ValueError):
    """A state record or peer message that cannot be decoded (wrong version, truncated)."""


class OwnerUnavailableError(RateLimitError):
    """The key's owner could not be reached and the fail policy is ``raise``."""


class NotOwnerError(RateLimitError):
    """A node asked to decide a key it does not own in its own view of the ring (a ring
    change in progress); the sender applies its fail policy."""
