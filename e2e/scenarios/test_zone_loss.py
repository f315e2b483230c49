"""Zone-aware placement end to end: 6 ``peer-ring-kv serve`` nodes in 3 zones (2 each,
``meta.zone=`` labels gossiped with the members) under load (N=3, W=2, R=2); both nodes of
one zone are killed with ``kill -9`` at the same moment. Because every key's 3 replicas sit
in 3 different zones, every key keeps 2 live replicas: writes keep their quorum, and no
acknowledged write may be lost.

Local driver only (zones are labels on local processes; gossip discovery carries them).
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
from e2e.steps import assert_no_loss, final_check, peers, record_load, ring_of, warm_up
from e2e.workload import Workload, WorkloadConfig

GOSSIP_PORT = 7946
ZONES = ("az-a", "az-b", "az-c")
PER_ZONE = 2
#: Load kept running with the zone down (writes must keep their W=2 quorum).
ZONE_DOWN_SECONDS = 10.0
POLL = 0.1


async def _wait_members(
    session: aiohttp.ClientSession, driver: ClusterDriver, expected: set[str], within: float
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


async def test_zone_loss_keeps_every_acknowledged_write(
    session: aiohttp.ClientSession,
    report: ScenarioReport,
    run_id: str,
    require_component: Any,
) -> None:
    """3 zones x 2 nodes, N=3 W=2: kill -9 a whole zone under load; 0 acknowledged lost."""
    if DRIVER != "local":
        pytest.skip("the zone scenario runs with the local driver only")
    from e2e.drivers.local import LocalDriver, random_hosts
    from peer_ring.kv._local_cluster import NodeAddress, loopback_aliases_available

    count = len(ZONES) * PER_ZONE
    hosts = random_hosts(count)
    require_component(
        "loopback aliases (127.x.y.z)",
        loopback_aliases_available(hosts),
        "the local driver needs 127.0.0.0/8 bound to lo (Linux has it)",
    )
    log_dir = RESULTS_DIR / "logs" / "zone_loss"
    shutil.rmtree(log_dir, ignore_errors=True)
    key = base64.b64encode(os.urandom(32)).decode()
    seeds = ",".join(f"{h}:{GOSSIP_PORT}" for h in hosts[:2])
    zone_of_host = {h: ZONES[i % len(ZONES)] for i, h in enumerate(hosts)}

    def discovery_args(address: NodeAddress) -> Sequence[str]:
        host = address.peer.rpartition(":")[0]
        options = {
            "bind": f"{host}:{GOSSIP_PORT}",
            "seeds": seeds,
            "cluster": f"e2e-{run_id}-zones",
            "key": key,
            "meta.zone": zone_of_host[host],
        }
        args = ["--discovery", "gossip"]
        for name, value in options.items():
            args += ["--discovery-option", f"{name}={value}"]
        return args

    driver = LocalDriver(
        log_dir, capacity=count, serve_args=SERVE_ARGS, hosts=hosts, discovery_args=discovery_args
    )
    try:
        report.driver = f"{driver.describe()}, gossip discovery, zones {', '.join(ZONES)}"
        await driver.start(count)
        everyone = set(peers(driver))
        await _wait_members(session, driver, everyone, within=60.0)
        ring = await ring_of(session, driver)
        zones = {peer: zone_of_host[peer.rpartition(":")[0]] for peer in everyone}
        # The nodes agree with the labels, and every partition spans the 3 zones.
        assert ring.zone_aware
        assert {m: ring.zone_of(m) for m in ring.members} == zones
        spans = {
            len({zones[m] for m in ring.preference_list(p, 3)}) for p in range(ring.partitions)
        }
        assert spans == {3}, spans

        workload = Workload(session, driver.endpoints, WorkloadConfig(), prefix=f"{run_id}:zone")
        workload.start(duration=150.0)
        await warm_up(workload, report)
        acked_before = workload.acknowledged_writes

        # kill -9 both nodes of the last zone at the same moment.
        lost_zone = ZONES[-1]
        victims = [n for n in driver.members() if zones[driver.endpoint(n).peer] == lost_zone]
        assert len(victims) == PER_ZONE
        killed_at = time.monotonic()
        await asyncio.gather(*(driver.kill(v) for v in victims))
        survivors = everyone - {driver.endpoint(v).peer for v in victims}
        removed = await _wait_members(session, driver, survivors, within=60.0)
        report.add(zone_removed_seconds=round(removed, 2))
        await asyncio.sleep(max(0.0, ZONE_DOWN_SECONDS - (time.monotonic() - killed_at)))
        last_fault = time.monotonic()
        await workload.stop()
        summary = record_load(report, workload)
        report.add(
            acknowledged_before_zone_loss=acked_before,
            acknowledged_with_zone_down=workload.acknowledged_writes - acked_before,
        )
        ring_check, acked, replicas = await final_check(
            session, driver, workload, report, since=last_fault, expected=sorted(survivors)
        )
        report.add(
            headline=f"zone {lost_zone} (2 of 6 nodes) killed at once: removed from every "
            f"ring in {removed:.1f} s; {acked.keys} keys "
            f"checked, {acked.lost} lost; {summary['failed_writes']} writes failed during "
            "the load"
        )
        # Writes went on with the zone down (the survivors hold 2 replicas of every key).
        assert workload.acknowledged_writes > acked_before
        assert_no_loss(report, ring_check, acked, replicas)
    finally:
        await driver.close()
