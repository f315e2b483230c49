"""``peer-ring-kv serve --gc-threshold / --gc-freeze-after-start``: real node processes report
the garbage-collector settings in effect on ``/metrics`` (flags, and the environment)."""

from __future__ import annotations

import asyncio
import gc
import re

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from peer_ring.kv._local_cluster import LocalCluster, allocate_addresses
from peer_ring.kv._metrics import _GcSettingsCollector

SERVE_ARGS = ["--replication=1", "--partitions=16"]


async def _gc_figures(cluster: LocalCluster) -> tuple[float, float, str]:
    """(young threshold, frozen objects, the whole text) from the node's /metrics."""
    url = f"{cluster.nodes[0].address.url}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as r:
        assert r.status == 200
        text = await r.text()
    threshold = re.search(r"^peer_ring_kv_gc_threshold (\S+)$", text, re.MULTILINE)
    frozen = re.search(r"^peer_ring_kv_gc_frozen_objects (\S+)$", text, re.MULTILINE)
    assert threshold is not None and frozen is not None, text
    return float(threshold.group(1)), float(frozen.group(1)), text


@pytest.mark.slow
async def test_flags_and_environment_reach_the_collector_of_the_node_process() -> None:
    by_flags = LocalCluster(
        allocate_addresses(1),
        serve_args=[*SERVE_ARGS, "--gc-threshold=12345", "--gc-freeze-after-start"],
    )
    by_env = LocalCluster(
        allocate_addresses(1),
        serve_args=SERVE_ARGS,
        env={"PEER_RING_GC_THRESHOLD": "23456", "PEER_RING_GC_FREEZE_AFTER_START": "true"},
    )
    default = LocalCluster(allocate_addresses(1), serve_args=SERVE_ARGS)
    async with by_flags, by_env, default:
        await asyncio.gather(*(c.start(ready_within=60) for c in (by_flags, by_env, default)))
        threshold, frozen, text = await _gc_figures(by_flags)
        assert threshold == 12345
        # Everything imported and built before the node started is frozen: tens of thousands
        # of objects in practice; a bound far below that still tells "frozen" from "not".
        assert frozen > 1000
        assert 'python_gc_collections_total{generation="2"}' in text
        threshold, frozen, _ = await _gc_figures(by_env)
        assert (threshold, frozen > 1000) == (23456, True)
        # Without the settings the node leaves Python's collector alone.
        threshold, frozen, _ = await _gc_figures(default)
        assert (threshold, frozen) == (gc.get_threshold()[0], 0)


@pytest.mark.slow
async def test_bad_gc_settings_exit_2_naming_the_setting() -> None:
    for argv, env, message in (
        (["--gc-threshold=0"], {}, "--gc-threshold: must be >= 1, got 0"),
        ([], {"PEER_RING_GC_FREEZE_AFTER_START": "maybe"}, "PEER_RING_GC_FREEZE_AFTER_START"),
    ):
        cluster = LocalCluster(allocate_addresses(1), serve_args=[*SERVE_ARGS, *argv], env=env)
        async with cluster:
            node = cluster.nodes[0]
            await node.start()
            assert await node.wait(within=30) == 2
            assert message in node.log_path.read_text()


def test_the_gauges_read_the_collector_at_scrape_time() -> None:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_GcSettingsCollector())
    previous = gc.get_threshold()
    gc.set_threshold(4321, previous[1], previous[2])
    try:
        assert registry.get_sample_value("peer_ring_kv_gc_threshold") == 4321
    finally:
        gc.set_threshold(*previous)
    assert registry.get_sample_value("peer_ring_kv_gc_threshold") == previous[0]
    assert registry.get_sample_value("peer_ring_kv_gc_frozen_objects") == gc.get_freeze_count()
