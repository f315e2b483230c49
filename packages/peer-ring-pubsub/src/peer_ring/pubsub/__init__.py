"""peer-ring pub-sub: partitioned, replicated topics with consumer groups."""

from peer_ring.pubsub.__about__ import __version__

__all__ = ["__version__"]
