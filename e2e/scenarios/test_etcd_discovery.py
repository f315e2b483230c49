"""etcd discovery end to end: 3 ``peer-ring-kv serve`` nodes that find each other through a
real etcd, under load (N=3, W=2, R=2): ``kill -9`` and restart of a node (after its lease
expired, then another one at once, while its old lease still lives), then a restart of etcd
itself (graceful, which takes seconds with watches open, and longer down than nothing).
No acknowledged write may be lost.

Local driver only (the nodes and etcd are processes on this machine). etcd is the binary
``tools/k8s-test-env`` builds, run by ``peer_ring.discovery.etcd.testing``.
"""

from __future__ import annotations

import asyncio
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

#: Lease TTL of the nodes (seconds): the package default, which outlasts a slow etcd stop.
TTL = 15
#: How long the killed node stays dead (longer than the TTL: it leaves the ring).
DEAD_SECONDS = TTL + 3.0
#: How long etcd stays down once stopped (longer than a keep-alive period).
ETCD_DOWN_SECONDS = 8.0
POLL = 0.1


async def _members(session: aiohttp.ClientSession, driver: ClusterDriver) -> dict[str, frozenset]:
    view = await cluster_view(session, driver.endpoints())
    return view.member_sets()


async def _wait_members(
    session: aiohttp.ClientSession,
    driver: ClusterDriver,
    expected: set[str],
    within: float = 60.0,
) -> float:
    """Poll ``/cluster`` until every serving node lists exactly ``expected``; seconds taken.
    Polling because the change happens in other processes (etcd, the nodes)."""
    start = time.monotonic()
    while True:
        sets = await _members(session, driver)
        if sets and all(s == expected for s in sets.values()):
            return time.monotonic() - start
        assert time.monotonic() - start < within, f"members {sets}, expected {expected}"
        await asyncio.sleep(POLL)


async def test_etcd_kill9_restart_and_etcd_restart(
    session: aiohttp.ClientSession,
    report: ScenarioReport,
    run_id: str,
    require_component: Any,
) -> None:
    """etcd discovery: kill -9 and restart of a node, then an etcd restart, under load."""
    if DRIVER != "local":
        pytest.skip("the etcd scenario runs with the local driver only")
    from e2e.drivers.local import LocalDriver, random_hosts
    from peer_ring.discovery.etcd.testing import INSTALL_HINT, EtcdServer, etcd_binary
    from peer_ring.kv._local_cluster import NodeAddress, loopback_aliases_available

    binary = etcd_binary()
    require_component("etcd", binary is not None, INSTALL_HINT)
    assert binary is not None
    hosts = random_hosts(3)
    require_component(
        "loopback aliases (127.x.y.z)",
        loopback_aliases_available(hosts),
        "the local driver needs 127.0.0.0/8 bound to lo (Linux has it)",
    )
    log_dir = RESULTS_DIR / "logs" / "etcd_kill9_restart_and_etcd_restart"
    shutil.rmtree(log_dir, ignore_errors=True)
    etcd = EtcdServer(binary, log_dir / "etcd")
    await asyncio.to_thread(etcd.start)

    def discovery_args(address: NodeAddress) -> Sequence[str]:
        options = {
            "endpoints": etcd.endpoint,
            "prefix": f"/peer-ring-e2e/{run_id}",
            "ttl": str(TTL),
        }
        args = ["--discovery", "etcd"]
        for key, value in options.items():
            args += ["--discovery-option", f"{key}={value}"]
        return args

    driver = LocalDriver(
        log_dir, capacity=3, serve_args=SERVE_ARGS, hosts=hosts, discovery_args=discovery_args
    )
    try:
        report.driver = f"{driver.describe()}, etcd {etcd.endpoint}"
        started = time.monotonic()
        await driver.start(3)
        report.add(start_seconds=round(time.monotonic() - started, 2))
        everyone = set(peers(driver))
        await _wait_members(session, driver, everyone)
        workload = Workload(session, driver.endpoints, WorkloadConfig(), prefix=f"{run_id}:etcd")

        # Phase 1: kill -9 one node under load; etcd drops it when its lease expires.
        workload.start(duration=150.0)
        await warm_up(workload, report)
        victim = driver.members()[-1]
        victim_peer = driver.endpoint(victim).peer
        killed_at = time.monotonic()
        await driver.kill(victim)
        removed = await _wait_members(session, driver, everyone - {victim_peer})
        report.add(killed_removed_seconds=round(removed, 2), ttl=TTL)
        await asyncio.sleep(max(0.0, DEAD_SECONDS - (time.monotonic() - killed_at)))

        # Phase 2: restart it (empty memory): it registers again and syncs.
        restarted_at = time.monotonic()
        await driver.restart(victim, graceful=False)
        report.add(restart_ready_seconds=round(time.monotonic() - restarted_at, 2))
        await _wait_members(session, driver, everyone)
        report.add(rejoined_seconds=round(time.monotonic() - restarted_at, 2))

        # Phase 2b: kill -9 another node and restart it at once, while its old lease lives:
        # the new process writes the same key under a new lease, so the old lease's expiry
        # must remove nothing.
        second = driver.members()[0]
        await driver.kill(second)
        quick_at = time.monotonic()
        await driver.restart(second, graceful=False)
        await _wait_members(session, driver, everyone)
        report.add(quick_restart_ready_seconds=round(time.monotonic() - quick_at, 2))
        await asyncio.sleep(TTL + 1.0)  # the old lease expires meanwhile...
        await _wait_members(session, driver, everyone, within=1.0)  # ...removing nothing

        # Phase 3: etcd stopped (gracefully: seconds with watches open) and down a while,
        # then back. The nodes keep their (stale) view: no departure may be reported while
        # etcd cannot be asked, and the leases survive.
        down_at = time.monotonic()
        stopping = asyncio.create_task(asyncio.to_thread(etcd.stop))
        smallest = len(everyone)
        while time.monotonic() - down_at < ETCD_DOWN_SECONDS or not stopping.done():
            sets = await _members(session, driver)
            smallest = min([smallest, *(len(s) for s in sets.values())])
            await asyncio.sleep(0.5)
        await stopping
        await asyncio.to_thread(etcd.start)
        back_at = time.monotonic()
        await _wait_members(session, driver, everyone)
        await asyncio.sleep(3.0)  # load goes on with etcd back
        sets = await _members(session, driver)
        smallest = min([smallest, *(len(s) for s in sets.values())])
        reregistered = sum(
            log.read_text(errors="replace").count("etcd discovery: re-registered")
            for log in log_dir.glob("node-*.log")
        )
        report.add(
            etcd_down_seconds=round(back_at - down_at, 1),
            smallest_view=smallest,
            reregistrations_after_etcd_restart=reregistered,
        )
        await workload.stop()
        record_load(report, workload)
        ring, acked, replicas = await final_check(session, driver, workload, report, since=back_at)
        report.add(
            headline=f"killed node left the ring in {removed:.1f} s (TTL {TTL} s); etcd down "
            f"{back_at - down_at:.0f} s, smallest view {smallest} of {len(everyone)}"
        )
        assert smallest == len(everyone), "a node dropped a member while etcd was down"
        assert removed < TTL + 5.0
        assert_no_loss(report, ring, acked, replicas)
    finally:
        await driver.close()
        await asyncio.to_thread(etcd.close)
