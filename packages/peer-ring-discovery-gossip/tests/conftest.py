"""Fixtures of the gossip tests: fast protocol settings and a view-waiting helper."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from peer_ring.discovery.gossip import GossipConfig, GossipDiscovery


@pytest.fixture
def fast_config() -> GossipConfig:
    """Loopback settings that detect a failure in about a second."""
    return GossipConfig.local(
        probe_interval=0.2,
        probe_timeout=0.1,
        gossip_interval=0.05,
        push_pull_interval=2.0,
        join_retry_interval=0.2,
    )


async def _wait_view(
    discovery: GossipDiscovery, predicate: Callable[[set[str]], bool], timeout: float = 10.0
) -> set[str]:
    """Consume the discovery's snapshots until ``predicate`` holds for the member names."""

    def names() -> set[str]:
        return {m.address for m in discovery._members()}

    if predicate(names()):
        return names()

    async def follow() -> set[str]:
        async for snapshot in discovery.watch():
            view = {m.address for m in snapshot}
            if predicate(view):
                return view
        raise AssertionError("watch ended")

    return await asyncio.wait_for(follow(), timeout)


@pytest.fixture
def wait_view() -> Callable[..., object]:
    """``await wait_view(discovery, predicate, timeout)``: the first view that satisfies it."""
    return _wait_view
