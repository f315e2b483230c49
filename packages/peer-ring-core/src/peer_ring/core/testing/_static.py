"""A discovery whose member set the test controls (no environment, no files)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

from peer_ring.core._types import Member


class FixedDiscovery:
    """A :class:`~peer_ring.core.Discovery` driven by the test.

    ``set_members`` publishes a new member set to the node, as a real discovery would on a
    scale-up or scale-down.
    """

    def __init__(self, self_address: str, members: Iterable[str]) -> None:
        self._self = self_address
        self._members = frozenset(Member(m) for m in members)
        self._queue: asyncio.Queue[frozenset[Member] | None] = asyncio.Queue()

    @property
    def self_address(self) -> str:
        return self._self

    async def start(self) -> frozenset[Member]:
        return self._members

    async def watch(self) -> AsyncIterator[frozenset[Member]]:
        while True:
            members = await self._queue.get()
            if members is None:
                return
            yield members

    def set_members(self, members: Iterable[str]) -> None:
        """Publish a new member set."""
        self._members = frozenset(Member(m) for m in members)
        self._queue.put_nowait(self._members)

    async def stop(self) -> None:
        self._queue.put_nowait(None)
