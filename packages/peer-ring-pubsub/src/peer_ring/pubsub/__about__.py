"""Version of the peer-ring-pubsub distribution (rewritten by `hatch version`)."""

__version__ = "0.1.0"
