"""Errors of ZooKeeper discovery.

Only :class:`ZooKeeperDiscoveryError` is public: ``start()`` raises it when ZooKeeper cannot
be used at all (unreachable, refused path, no permission). The others are internal: they
classify what the typed kazoo wrapper (``_kazoo``) saw, so the discovery loop can tell an
outage it waits out from an answer it must act on.
"""

from __future__ import annotations

from peer_ring.core import PeerRingError


class ZooKeeperDiscoveryError(PeerRingError):
    """ZooKeeper cannot be used for discovery (raised by ``start()``, with the reason)."""


class ZkUnavailable(Exception):
    """No answer: connection lost, session expired or closed, or the request timed out."""


class ZkNodeExists(Exception):
    """``create`` found the node already there."""


class ZkNoNode(Exception):
    """The node (or its parent) does not exist."""


class ZkBadVersion(Exception):
    """A conditional ``delete`` lost a race: the node changed in between."""


class ZkRequestError(Exception):
    """ZooKeeper refused the request (no permission, parent is ephemeral, bad argument...)."""
