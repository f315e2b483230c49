"""ZooKeeper discovery end to end: 3 ``peer-ring-kv serve`` nodes that find each other
through a real ZooKeeper, under load (N=3, W=2, R=2): ``kill -9`` and restart of a node
(after its session expired, then another one at once, within its session), then a restart
of ZooKeeper itself. No acknowledged write may be lost.

Local driver only (the nodes and ZooKeeper are processes on this machine). ZooKeeper is
Debian's ``zookeeper`` package run by ``peer_ring.discovery.zookeeper.testing``.
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

#: Session timeout of the nodes (seconds): a killed node leaves the ring this long after.
SESSION_TIMEOUT = 8.0
#: How long the killed node stays dead (longer than the session timeout: it leaves).
DEAD_SECONDS = 12.0
#: How long ZooKeeper stays down (longer than the session timeout: sessions must survive).
ZK_DOWN_SECONDS = 10.0
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
    Polling because the change happens in other processes (ZooKeeper, the nodes)."""
    start = time.monotonic()
    while True:
        sets = await _members(session, driver)
        if sets and all(s == expected for s in sets.values()):
            return time.monotonic() - start
        assert time.monotonic() - start < within, f"members {sets}, expected {expected}"
        await asyncio.sleep(POLL)


async def test_zookeeper_kill9_restart_and_zookeeper_restart(
    session: aiohttp.ClientSession,
    report: ScenarioReport,
    run_id: str,
    require_component: Any,
    request: pytest.FixtureRequest,
) -> None:
    """ZooKeeper discovery: kill -9 and restart of a node, then a ZooKeeper restart, under load."""
    if DRIVER != "local":
        pytest.skip("the ZooKeeper scenario runs with the local driver only")
    from e2e.drivers.local import LocalDriver, random_hosts
    from peer_ring.discovery.zookeeper.testing import (
        INSTALL_HINT,
        ZooKeeperServer,
        zookeeper_available,
    )
    from peer_ring.kv._local_cluster import NodeAddress, loopback_aliases_available

    require_component("zookeeper", zookeeper_available(), INSTALL_HINT)
    hosts = random_hosts(3)
    require_component(
        "loopback aliases (127.x.y.z)",
        loopback_aliases_available(hosts),
        "the local driver needs 127.0.0.0/8 bound to lo (Linux has it)",
    )
    log_dir = RESULTS_DIR / "logs" / "zookeeper_kill9_restart_and_zookeeper_restart"
    shutil.rmtree(log_dir, ignore_errors=True)
    zk = ZooKeeperServer(log_dir / "zookeeper")
    zk.start()

    def discovery_args(address: NodeAddress) -> Sequence[str]:
        options = {
            "hosts": zk.hosts,
            "path": f"/peer-ring-e2e/{run_id}",
            "session-timeout": f"{SESSION_TIMEOUT:g}",
        }
        args = ["--discovery", "zookeeper"]
        for key, value in options.items():
            args += ["--discovery-option", f"{key}={value}"]
        return args

    driver = LocalDriver(
        log_dir, capacity=3, serve_args=SERVE_ARGS, hosts=hosts, discovery_args=discovery_args
    )
    try:
        report.driver = f"{driver.describe()}, ZooKeeper {zk.hosts}"
        started = time.monotonic()
        await driver.start(3)
        report.add(start_seconds=round(time.monotonic() - started, 2))
        everyone = set(peers(driver))
        await _wait_members(session, driver, everyone)
        workload = Workload(session, driver.endpoints, WorkloadConfig(), prefix=f"{run_id}:zk")

        # Phase 1: kill -9 one node under load; ZooKeeper drops it after its session timeout.
        workload.start(duration=150.0)
        await warm_up(workload, report)
        victim = driver.members()[-1]
        victim_peer = driver.endpoint(victim).peer
        killed_at = time.monotonic()
        await driver.kill(victim)
        removed = await _wait_members(session, driver, everyone - {victim_peer})
        report.add(killed_removed_seconds=round(removed, 2), session_timeout=SESSION_TIMEOUT)
        await asyncio.sleep(max(0.0, DEAD_SECONDS - (time.monotonic() - killed_at)))

        # Phase 2: restart it (empty memory): it registers again and syncs.
        restarted_at = time.monotonic()
        await driver.restart(victim, graceful=False)
        report.add(restart_ready_seconds=round(time.monotonic() - restarted_at, 2))
        rejoined = await _wait_members(session, driver, everyone)
        report.add(rejoined_seconds=round(time.monotonic() - restarted_at, 2))
        assert rejoined >= 0

        # Phase 2b: kill -9 another node and restart it at once, within its old session's
        # timeout: the new process finds its predecessor's znode and takes it over.
        second = driver.members()[0]
        await driver.kill(second)
        quick_at = time.monotonic()
        await driver.restart(second, graceful=False)
        await _wait_members(session, driver, everyone)
        report.add(quick_restart_ready_seconds=round(time.monotonic() - quick_at, 2))
        await asyncio.sleep(SESSION_TIMEOUT + 1.0)  # the old session expires meanwhile...
        await _wait_members(session, driver, everyone, within=1.0)  # ...removing nothing
        replaced = sum(
            log.read_text(errors="replace").count("zookeeper discovery: replacing")
            for log in log_dir.glob("node-*.log")
        )
        report.add(znodes_replaced=replaced)

        # Phase 3: ZooKeeper down longer than the session timeout, then back. The nodes keep
        # their (stale) view: no departure may be reported while ZooKeeper cannot be asked.
        zk.stop()
        down_at = time.monotonic()
        smallest = len(everyone)
        while time.monotonic() - down_at < ZK_DOWN_SECONDS:
            sets = await _members(session, driver)
            smallest = min([smallest, *(len(s) for s in sets.values())])
            await asyncio.sleep(0.5)
        zk.start()
        back_at = time.monotonic()
        await _wait_members(session, driver, everyone)
        await asyncio.sleep(3.0)  # load goes on with ZooKeeper back (sessions revalidated)
        sets = await _members(session, driver)
        smallest = min([smallest, *(len(s) for s in sets.values())])
        report.add(zk_down_seconds=round(back_at - down_at, 1), smallest_view=smallest)
        await workload.stop()
        record_load(report, workload)
        ring, acked, replicas = await final_check(session, driver, workload, report, since=back_at)
        report.add(
            headline=f"killed node left the ring in {removed:.1f} s (session "
            f"{SESSION_TIMEOUT:g} s); ZooKeeper down {back_at - down_at:.0f} s, smallest view "
            f"{smallest} of {len(everyone)}"
        )
        assert smallest == len(everyone), "a node dropped a member while ZooKeeper was down"
        assert removed < SESSION_TIMEOUT + 5.0
        assert_no_loss(report, ring, acked, replicas)
    finally:
        await driver.close()
        zk.stop()
