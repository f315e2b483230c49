"""Static discovery: the member set is a fixed list given at start-up."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Iterable, Mapping

from peer_ring.core import InvalidArgumentError, Member
from peer_ring.discovery.static._address import normalize_address

logger = logging.getLogger(__name__)

#: Environment variable holding the comma-separated peer list.
ENV_PEERS = "PEER_RING_PEERS"
#: Environment variable holding this node's own address.
ENV_SELF = "PEER_RING_SELF_ADDRESS"


class StaticDiscovery:
    """A fixed list of peers (``host:port`` each), for laptops, VMs and tests.

    Both layouts work: many loopback IPs with one port (``127.0.0.1:7101``,
    ``127.0.0.2:7101``...) and one IP with many ports (``127.0.0.1:7101``,
    ``127.0.0.1:7102``...). A peer's address is its identity, so every node must be given
    the same spelling of each address.

    Args:
        peers: every member's address, including this node's (added if missing).
        self_address: this node's own address; its gRPC listener binds to it.

    Raises:
        InvalidArgumentError: a malformed address or an empty ``self_address``.
    """

    def __init__(self, peers: Iterable[str], self_address: str) -> None:
        self._self = normalize_address(self_address)
        normalized = [normalize_address(p) for p in peers if p.strip()]
        if self._self not in normalized:
            logger.warning("self address %s is not in the peer list; adding it", self._self)
            normalized.append(self._self)
        self._members = frozenset(Member(p) for p in normalized)
        self._stopped = asyncio.Event()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StaticDiscovery:
        """Build from ``PEER_RING_PEERS`` (comma-separated) and ``PEER_RING_SELF_ADDRESS``.

        Raises:
            InvalidArgumentError: a variable is missing or malformed.
        """
        env = os.environ if environ is None else environ
        self_address = env.get(ENV_SELF, "").strip()
        if not self_address:
            raise InvalidArgumentError(f"{ENV_SELF} is not set (this node's host:port)")
        peers = [p for p in env.get(ENV_PEERS, "").split(",") if p.strip()]
        if not peers:
            raise InvalidArgumentError(f"{ENV_PEERS} is not set (comma-separated host:port list)")
        return cls(peers, self_address)

    @property
    def self_address(self) -> str:
        """This node's address."""
        return self._self

    @property
    def peers(self) -> frozenset[str]:
        """Every member's address."""
        return frozenset(m.address for m in self._members)

    async def start(self) -> frozenset[Member]:
        """Return the fixed member set."""
        return self._members

    async def watch(self) -> AsyncIterator[frozenset[Member]]:
        """A static list never changes: wait until ``stop()`` and end."""
        await self._stopped.wait()
        return
        yield self._members  # pragma: no cover - makes this an async generator

    async def stop(self) -> None:
        """End ``watch()``."""
        self._stopped.set()
