"""Version of the peer-ring-kv-store distribution (rewritten by `hatch version`)."""

__version__ = "0.1.0"
