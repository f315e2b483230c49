"""Gossip discovery end to end: 5 ``peer-ring-kv serve`` nodes that find each other by SWIM
gossip (``--discovery gossip``, encrypted, no registry) under load (N=3, W=2, R=2):
``kill -9`` of a node until the others declare it dead, its restart, then a ``kill -9``
followed by an immediate restart on the same address (before anyone noticed). No
acknowledged write may be lost.

Local driver only (the nodes are processes on this machine, gossiping over UDP/TCP on their
own 127.x.y.z addresses).
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import pytest

from e2e.checker import cluster_view
from e2e.drivers.base import ClusterDriver
from e2e.report import RESULTS_DIR, ScenarioReport
from e2e.settings import DRIVER, SERVE_ARGS
from e2e.steps import assert_no_loss, final_check, peers, record_load, warm_up
from e2e.workload import Workload, WorkloadConfig

GOSSIP_PORT = 7946
NODES = 5
#: How long the killed node stays dead (well past detection: it must leave the ring).
DEAD_SECONDS = 5.0
POLL = 0.1


async def _wait_members(
    session: aiohttp.ClientSession,
    driver: ClusterDriver,
    expected: set[str],
    within: float = 60.0,
) -> float:
    """Poll ``/cluster`` until every serving node lists exactly ``expected``; seconds taken.
    Polling because the change happens in other processes."""
    start = time.monotonic()
    while True:
        sets = (await cluster_view(session, driver.endpoints())).member_sets()
        if sets and all(s == expected for s in sets.values()):
            return time.monotonic() - start
        assert time.monotonic() - start < within, f"members {sets}, expected {expected}"
        await asyncio.sleep(POLL)


async def test_gossip_kill9_restart_and_fast_restart(
    session: aiohttp.ClientSession,
    report: ScenarioReport,
    run_id: str,
    require_component: Any,
) -> None:
    """Gossip discovery: kill -9 (detected, removed), restart, kill -9 + immediate restart."""
    if DRIVER != "local":
        pytest.skip("the gossip scenario runs with the local driver only")
    from e2e.drivers.local import LocalDriver, random_hosts
    from peer_ring.kv._local_cluster import NodeAddress, loopback_aliases_available

    hosts = random_hosts(NODES)
    require_component(
        "loopback aliases (127.x.y.z)",
        loopback_aliases_available(hosts),
        "the local driver needs 127.0.0.0/8 bound to lo (Linux has it)",
    )
    log_dir = RESULTS_DIR / "logs" / "gossip_kill9_restart_and_fast_restart"
    shutil.rmtree(log_dir, ignore_errors=True)
    key = base64.b64encode(os.urandom(32)).decode()
    seeds = ",".join(f"{h}:{GOSSIP_PORT}" for h in hosts[:2])

    def discovery_args(address: NodeAddress) -> Sequence[str]:
        host = address.peer.rpartition(":")[0]
        options = {
            "bind": f"{host}:{GOSSIP_PORT}",
            "seeds": seeds,
            "cluster": f"e2e-{run_id}",
            "key": key,
        }
        args = ["--discovery", "gossip"]
        for name, value in options.items():
            args += ["--discovery-option", f"{name}={value}"]
        return args

    driver = LocalDriver(
        log_dir, capacity=NODES, serve_args=SERVE_ARGS, hosts=hosts, discovery_args=discovery_args
    )
    try:
        report.driver = f"{driver.describe()}, gossip discovery (AES-GCM, preset lan)"
        started = time.monotonic()
        await driver.start(NODES)
        everyone = set(peers(driver))
        formed = await _wait_members(session, driver, everyone)
        report.add(start_seconds=round(time.monotonic() - started, 2), formed_seconds=formed)
        workload = Workload(session, driver.endpoints, WorkloadConfig(), prefix=f"{run_id}:gossip")

        # Phase 1: kill -9 one node under load; the others' failure detector removes it.
        workload.start(duration=150.0)
        await warm_up(workload, report)
        victim = driver.members()[-1]
        victim_peer = driver.endpoint(victim).peer
        killed_at = time.monotonic()
        await driver.kill(victim)
        removed = await _wait_members(session, driver, everyone - {victim_peer})
        report.add(killed_removed_seconds=round(removed, 2))
        await asyncio.sleep(max(0.0, DEAD_SECONDS - (time.monotonic() - killed_at)))

        # Phase 2: restart it (empty memory, new incarnation): it joins through the seeds.
        restarted_at = time.monotonic()
        await driver.restart(victim, graceful=False)
        report.add(restart_ready_seconds=round(time.monotonic() - restarted_at, 2))
        await _wait_members(session, driver, everyone)
        report.add(rejoined_seconds=round(time.monotonic() - restarted_at, 2))

        # Phase 3: kill -9 and restart at once, before the failure detector notices: the new
        # process's first incarnation beats the old one's state everywhere.
        quick = driver.members()[-2]
        quick_at = time.monotonic()
        await driver.restart(quick, graceful=False)
        await _wait_members(session, driver, everyone)
        last_fault = time.monotonic()
        report.add(fast_restart_seconds=round(last_fault - quick_at, 2))
        await asyncio.sleep(3.0)  # load goes on with everyone back
        await workload.stop()
        record_load(report, workload)
        ring, acked, replicas = await final_check(
            session, driver, workload, report, since=last_fault
        )
        report.add(
            headline=f"killed node removed from every ring in {removed:.1f} s; restarted "
            f"node back in {report.figures.get('rejoined_seconds')} s (process start "
            f"included); kill -9 + immediate restart back in {last_fault - quick_at:.1f} s"
        )
        assert removed < 15.0
        assert_no_loss(report, ring, acked, replicas)
    finally:
        await driver.close()
