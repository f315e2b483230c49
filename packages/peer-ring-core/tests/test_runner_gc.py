"""``peer_ring.core.run``'s opt-in garbage-collector settings (issue 23).

Off by default: the library leaves the host's collector alone. When asked, the threshold
applies while ``main`` runs, every node start freezes what exists, and both are undone when
``run`` returns.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest

from peer_ring.core import InvalidArgumentError, PeerRing, PeerRingConfig, run
from peer_ring.core.testing import FixedDiscovery, MemoryNetwork

ADDRESS = "10.9.0.1:7000"


@pytest.fixture(autouse=True)
def clean_gc() -> Iterator[None]:
    """Each test starts and ends with nothing frozen and the same thresholds."""
    before = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


async def start_a_node() -> dict[str, Any]:
    """Start and stop one node; report the collector's state at each step."""
    seen: dict[str, Any] = {"threshold": gc.get_threshold(), "before": gc.get_freeze_count()}
    node = PeerRing(
        FixedDiscovery(ADDRESS, [ADDRESS]),
        config=PeerRingConfig(replication=1, anti_entropy_interval=None),
        transport=MemoryNetwork().transport(ADDRESS),
    )
    await node.start()
    seen["after_start"] = gc.get_freeze_count()
    await node.stop()
    return seen


def test_by_default_the_collector_is_left_alone() -> None:
    threshold = gc.get_threshold()
    seen = run(start_a_node(), use_uvloop=False)
    assert seen["threshold"] == threshold
    assert seen["before"] == seen["after_start"] == 0
    assert gc.get_threshold() == threshold


def test_gc_threshold_applies_while_main_runs_and_is_restored() -> None:
    threshold = gc.get_threshold()
    seen = run(start_a_node(), use_uvloop=False, gc_threshold=25_000)
    assert seen["threshold"] == (25_000, threshold[1], threshold[2])
    assert gc.get_threshold() == threshold


def test_gc_freeze_after_start_freezes_at_each_start_and_unfreezes_at_the_end() -> None:
    seen = run(start_a_node(), use_uvloop=False, gc_freeze_after_start=True)
    assert seen["before"] == 0  # nothing frozen before a node started
    assert seen["after_start"] > 1000  # the imported modules, at least
    assert gc.get_freeze_count() == 0


def test_the_settings_are_undone_when_main_fails() -> None:
    threshold = gc.get_threshold()

    async def fails() -> None:
        await start_a_node()
        raise LookupError("boom")

    with pytest.raises(LookupError):
        run(fails(), use_uvloop=False, gc_threshold=9_000, gc_freeze_after_start=True)
    assert gc.get_threshold() == threshold
    assert gc.get_freeze_count() == 0


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "700"])
def test_a_bad_threshold_is_refused_before_anything_runs(bad: Any) -> None:
    ran: list[bool] = []

    async def main() -> None:
        ran.append(True)

    coro = main()
    with pytest.raises(InvalidArgumentError, match="gc_threshold"):
        run(coro, gc_threshold=bad)
    coro.close()
    assert ran == []
    assert gc.get_freeze_count() == 0
