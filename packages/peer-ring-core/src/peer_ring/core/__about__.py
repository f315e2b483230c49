"""Version of the peer-ring-core distribution (rewritten by `hatch version`)."""

__version__ = "0.1.0"
