"""Version of the peer-ring-discovery-gossip distribution (rewritten by `hatch version`)."""

__version__ = "0.1.0"
