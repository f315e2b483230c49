"""Fixtures of the gossip tests: fast protocol settings, real-time bounds derived from them,
and a view-waiting helper that says what it saw when a bound is reached."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from peer_ring.discovery.gossip import GossipConfig, GossipDiscovery

#: A loaded CI machine (2 cores shared by many jobs) runs timers and delivers packets late:
#: every bound below is twice the protocol's own worst case plus this many seconds. The
#: bounds are only reached on a bug (a view that never converges); they assert no speed.
LOAD_FACTOR = 2.0
LOAD_MARGIN = 15.0


@dataclass(frozen=True)
class ViewBounds:
    """Real-time upper bounds (seconds) of the view changes of a cluster of ``n`` members.

    Attributes:
        join: a started member and the others see each other (join, gossip, push-pull).
        detect: a member killed without a leave message is gone from every view.
        leave: a member that left gracefully is gone from every view.
        quiet: local work with no protocol wait (a packet received and counted).
    """

    join: float
    detect: float
    leave: float
    quiet: float


def view_bounds(config: GossipConfig, n: int) -> ViewBounds:
    """The bounds for ``config`` and ``n`` members, from the protocol's timing settings."""
    # An update reaches everyone within its retransmissions (one per gossip round) or, when
    # those all missed a member, with the next push-pull exchange.
    spread = config.retransmit_limit(n) * config.gossip_interval + config.push_pull_period(n)
    join = config.join_retry_interval + spread
    # Failure detection: the dead member's turn in the probe round (every member is probed
    # once per round of n - 1 probes), its direct and indirect probes (one probe interval),
    # all stretched up to awareness_max_multiplier by Lifeguard on a node that misses its
    # own deadlines (as on a loaded machine); then the longest suspicion timeout (it only
    # shrinks with confirmations) and the death's spread.
    probing = n * config.probe_interval * config.awareness_max_multiplier
    _, suspicion_max = config.suspicion_timeouts(n)
    detect = probing + suspicion_max + spread
    return ViewBounds(
        join=_loaded(join),
        detect=_loaded(detect),
        leave=_loaded(spread),  # a leave is gossiped at once (urgent), like a death
        quiet=_loaded(0.0),
    )


def _loaded(seconds: float) -> float:
    return LOAD_FACTOR * seconds + LOAD_MARGIN


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


@pytest.fixture
def bounds() -> Callable[[GossipConfig, int], ViewBounds]:
    """``bounds(config, n)``: the :class:`ViewBounds` of ``n`` members on ``config``."""
    return view_bounds


async def _wait_view(
    discovery: GossipDiscovery,
    predicate: Callable[[set[str]], bool],
    timeout: float,
    what: str = "the expected view",
) -> set[str]:
    """Poll the discovery's live member names until ``predicate`` holds for them.

    Not ``discovery.watch()``: that is the node's one stream, each snapshot compared with the
    last one it yielded (or ``start()`` returned). A test's successive waits are successive
    consumers: a view that changed back to that snapshot between a wait's first look and its
    watcher's first step was never yielded, and the wait hung (a leave seen by a member whose
    view then equalled its view at start).

    Raises:
        AssertionError: not within ``timeout`` seconds; the message names the node, ``what``
            was awaited and the views it went through.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    view = {m.address for m in discovery._members()}
    seen = [sorted(view)]
    while not predicate(view):
        if loop.time() >= deadline:
            raise AssertionError(
                f"{discovery.self_address}: no {what} within {timeout:.1f} s; last view "
                f"{sorted(view)} (views seen, oldest first: {seen[-5:]})"
            )
        await asyncio.sleep(0.02)
        view = {m.address for m in discovery._members()}
        if sorted(view) != seen[-1]:
            seen.append(sorted(view))
    return view


@pytest.fixture
def wait_view() -> Callable[..., object]:
    """``await wait_view(discovery, predicate, timeout, what)``: the first view that satisfies
    ``predicate``; ``timeout`` comes from ``bounds`` (``what`` names it in the failure)."""
    return _wait_view
