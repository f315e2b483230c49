"""peer-ring rate limiter: distributed, owner-decided rate limits built on peer-ring.

The public API is re-exported here; everything in ``_``-prefixed modules is private.
"""

from peer_ring.ratelimit.__about__ import __version__
from peer_ring.ratelimit._algorithms import (
    decide,
    expires_at,
    fixed_window,
    gcra,
    leaky_bucket,
    sliding_window_counter,
    sliding_window_log,
    token_bucket,
)
from peer_ring.ratelimit._decision import Decision
from peer_ring.ratelimit._errors import (
    CorruptStateError,
    InvalidCostError,
    InvalidLimitError,
    KeyTooLongError,
    NotOwnerError,
    OwnerUnavailableError,
    RateLimitError,
    UnknownAlgorithmError,
)
from peer_ring.ratelimit._estimate import fair_share
from peer_ring.ratelimit._limit import MAX_LIMIT, MAX_LOG_LIMIT, Algorithm, Limit
from peer_ring.ratelimit._limiter import MAX_COST, MAX_KEY_BYTES, RateLimiter
from peer_ring.ratelimit._metrics import RateLimiterMetrics
from peer_ring.ratelimit._policy import FailPolicy, Mode
from peer_ring.ratelimit._state import STATE_VERSION, decode_state, encode_state

__all__ = [
    "MAX_COST",
    "MAX_KEY_BYTES",
    "MAX_LIMIT",
    "MAX_LOG_LIMIT",
    "STATE_VERSION",
    "Algorithm",
    "CorruptStateError",
    "Decision",
    "FailPolicy",
    "InvalidCostError",
    "InvalidLimitError",
    "KeyTooLongError",
    "Limit",
    "Mode",
    "NotOwnerError",
    "OwnerUnavailableError",
    "RateLimitError",
    "RateLimiter",
    "RateLimiterMetrics",
    "UnknownAlgorithmError",
    "__version__",
    "decide",
    "decode_state",
    "encode_state",
    "expires_at",
    "fair_share",
    "fixed_window",
    "gcra",
    "leaky_bucket",
    "sliding_window_counter",
    "sliding_window_log",
    "token_bucket",
]
