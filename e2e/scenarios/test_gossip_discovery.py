"""Gossip discovery end to end: 5 ``peer-ring-kv serve`` nodes that find each other by SWIM
gossip (``--discovery gossip``, encrypted, no registry) under load (N=3, W=2, R=2):
``kill -9`` of a node until the others declare it dead, its restart, then a ``kill -9``
followed by an immediate restart on the same address (before anyone noticed). No
acknowledged write may be lost.

Local driver only (the nodes are processes on this machine, gossiping over UDP/TCP on their
own 127.x.y.z addresses).

The second scenario runs the same cluster with 10 % of all UDP packets (the gossip) dropped:
inside a private network namespace (``unshare -n``) whose loopback has an iptables
``statistic`` rule, so no other process on the machine is affected. This kernel has no
``netem``; the rule drops packets the same way. The outer test starts pytest again inside the
namespace on the inner test (skipped everywhere else) and takes over its figures.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from e2e.checker import cluster_view
from e2e.drivers.base import ClusterDriver
from e2e.report import RESULTS_DIR, ScenarioReport
from e2e.settings import DRIVER, SERVE_ARGS
from e2e.steps import assert_no_loss, final_check, peers, record_load, warm_up
from e2e.workload import Workload, WorkloadConfig

REPO = Path(__file__).resolve().parents[2]
GOSSIP_PORT = 7946
NODES = 5
#: How long the killed node stays dead (well past detection: it must leave the ring).
DEAD_SECONDS = 5.0
POLL = 0.1
#: Set (to the loss probability) inside the namespace, for the inner test.
ENV_INNER = "PEER_RING_E2E_GOSSIP_NETNS_LOSS"
#: How long the lossy scenario watches views under load before any fault (seconds).
LOSSY_WATCH_SECONDS = 40.0


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
    await _scenario(session, report, run_id, require_component, "gossip_kill9_restart", 0.0)


def _namespace_works() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("iptables") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-n", "iptables", "-L", "INPUT"], capture_output=True, timeout=20
    )
    return probe.returncode == 0


async def test_gossip_under_ten_percent_udp_loss(
    report: ScenarioReport, require_component: Any
) -> None:
    """Gossip discovery with 10 % of UDP packets dropped (private network namespace): no
    false removal under load, kill -9 detected, restarts, 0 lost."""
    if DRIVER != "local":
        pytest.skip("the gossip scenario runs with the local driver only")
    require_component(
        "unshare -n with iptables (root)",
        _namespace_works(),
        "run as root with util-linux and iptables installed (apt-get install iptables)",
    )
    inner = f"{__file__}::test_gossip_lossy_inner"
    setup = (
        "ip link set lo up && iptables -A INPUT -p udp -m statistic --mode random "
        '--probability 0.1 -j DROP && exec "$0" -m pytest "$1" -q -p no:cacheprovider -n 0'
    )  # -n 0: the one inner test runs in the namespace's own process, no xdist workers
    done = await asyncio.to_thread(
        subprocess.run,
        ["unshare", "-n", "sh", "-c", setup, sys.executable, inner],
        env={**os.environ, ENV_INNER: "0.1"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    path = RESULTS_DIR / "gossip_lossy_inner.json"
    if path.exists():
        inner_report = json.loads(path.read_text())
        report.driver = inner_report.get("driver", "")
        report.add(**inner_report.get("figures", {}))
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-2000:])


async def test_gossip_lossy_inner(
    session: aiohttp.ClientSession,
    report: ScenarioReport,
    run_id: str,
    require_component: Any,
) -> None:
    """The lossy scenario itself, run inside the namespace by the test above."""
    loss = os.environ.get(ENV_INNER)
    if not loss:
        pytest.skip("runs inside the network namespace of test_gossip_under_ten_percent_udp_loss")
    await _scenario(session, report, run_id, require_component, "gossip_lossy", float(loss))


async def _scenario(
    session: aiohttp.ClientSession,
    report: ScenarioReport,
    run_id: str,
    require_component: Any,
    slug: str,
    loss: float,
) -> None:
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
    log_dir = RESULTS_DIR / "logs" / slug
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
        if loss:
            report.driver += f", {loss:.0%} of UDP packets dropped (network namespace)"
        started = time.monotonic()
        await driver.start(NODES)
        everyone = set(peers(driver))
        formed = await _wait_members(session, driver, everyone)
        report.add(start_seconds=round(time.monotonic() - started, 2), formed_seconds=formed)
        workload = Workload(session, driver.endpoints, WorkloadConfig(), prefix=f"{run_id}:gossip")

        # Phase 1: kill -9 one node under load; the others' failure detector removes it.
        workload.start(duration=150.0 + (LOSSY_WATCH_SECONDS if loss else 0.0))
        await warm_up(workload, report)
        if loss:
            # Under loss, probes fail now and then: every suspicion must be refuted in time,
            # so no healthy node ever leaves a ring.
            smallest = NODES
            watch_end = time.monotonic() + LOSSY_WATCH_SECONDS
            while time.monotonic() < watch_end:
                sets = (await cluster_view(session, driver.endpoints())).member_sets()
                smallest = min([smallest, *(len(v) for v in sets.values())])
                await asyncio.sleep(0.25)
            report.add(smallest_view_under_loss=smallest, loss=loss)
            assert smallest == NODES, "a healthy node was removed from a ring under loss"
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
        assert removed < 20.0 if loss else removed < 15.0
        assert_no_loss(report, ring, acked, replicas)
    finally:
        await driver.close()
