"""Version of the peer-ring-discovery-k8s distribution (rewritten by `hatch version`)."""

__version__ = "0.1.0"
