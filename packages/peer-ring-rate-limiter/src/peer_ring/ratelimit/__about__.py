"""Version of the peer-ring-rate-limiter distribution (rewritten by `hatch version`)."""

__version__ = "0.1.0"
