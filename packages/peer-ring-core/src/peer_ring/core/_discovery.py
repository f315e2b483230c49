"""The discovery contract: how a node learns who its peers are.

Discovery modules (static list, Kubernetes, later etcd and gossip) implement
:class:`Discovery`. They report *full snapshots* of the member set rather than deltas: a
snapshot can be applied twice or late without corrupting the view, which makes
"no event lost or duplicated into the ring" a property of the contract rather than of
each implementation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from peer_ring.core._types import Member


@runtime_checkable
class Discovery(Protocol):
    """Source of the cluster's member set.

    Lifecycle: ``start()`` once, then ``watch()`` (at most one consumer), then ``stop()``.
    """

    @property
    def self_address(self) -> str:
        """``host:port`` of this node's peer listener: its identity in the ring."""
        ...

    async def start(self) -> frozenset[Member]:
        """Begin discovering and return the initial member set (including this node)."""
        ...

    def watch(self) -> AsyncIterator[frozenset[Member]]:
        """Yield the complete member set each time it changes, until ``stop()``.

        The iterator ends (``StopAsyncIteration``) after ``stop()``. Implementations may
        coalesce quick successive changes and may repeat an unchanged set.
        """
        ...

    async def stop(self) -> None:
        """Stop discovering and release resources; idempotent."""
        ...
