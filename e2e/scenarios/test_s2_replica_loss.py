"""Scenario 2: a replica that is not the owner dies, N copies come back, then a second node
dies (5 nodes, N=3 W=2 R=2).

The original project re-replicated nothing when a replica died, and only the owner's death
was ever considered. Here: the victim is the *second* node of a key's preference list (a
replica, not the owner, of that key and of about a third of the partitions), the survivors
must notice it is gone (the failure detector marks it down after ``down_after``, 10 s by
default) and copy its partitions until every key has 3 replicas again on the 4 survivors.
Only then a second node dies — the owner of the same key — and the 3 survivors must again
hold everything 3 times.
"""

from __future__ import annotations

import time

import aiohttp

from e2e.report import ScenarioReport
from e2e.settings import DriverFactory
from e2e.steps import (
    assert_no_loss,
    check_acknowledged,
    check_replicas,
    converge,
    name_of,
    peers,
    record_load,
    ring_of,
    sleep_under_fault,
    warm_up,
)
from e2e.workload import Workload, WorkloadConfig

#: Seconds of load from each death on, at least (the ring converges meanwhile: the failure
#: detector's ``down_after`` is 10 s by default).
LOAD_AFTER_DEATH = 12.0


async def test_s2_replica_loss_then_second_death(
    make_driver: DriverFactory,
    session: aiohttp.ClientSession,
    report: ScenarioReport,
    run_id: str,
) -> None:
    """a non-owner replica dies, N copies are restored, then a second node dies: 0 lost."""
    driver = await make_driver(capacity=5)
    report.driver = driver.describe()
    await driver.start(5)
    workload = Workload(session, driver.endpoints, WorkloadConfig(), prefix=f"{run_id}:s2")

    workload.start(duration=120.0)
    await warm_up(workload, report)
    ring = await ring_of(session, driver)
    probe = sorted(workload.acknowledged_keys())[0]
    prefs = ring.preference_list(ring.partition_for_key(probe.encode()), 3)
    replica, owner = name_of(driver, prefs[1]), name_of(driver, prefs[0])
    report.add(probe_key=probe, first_victim=f"{replica} (replica, not owner)", second_victim=owner)

    # First death: a replica that is not the owner. The ring is polled while the load
    # goes on, so the detection time is measured, not the length of the load phase.
    first_at = time.monotonic()
    await driver.kill(replica)
    survivors = [n for n in driver.members() if n != replica]
    ring1 = await converge(
        session, driver, report, label="first_death", expected=peers(driver, survivors)
    )
    await sleep_under_fault(max(0.0, first_at + LOAD_AFTER_DEATH - time.monotonic()))
    await workload.stop()
    restored = await check_replicas(session, driver, workload, report, label="restored")
    report.add(restore_seconds=round(time.monotonic() - first_at, 2))
    first = await check_acknowledged(session, driver.endpoints(), workload, report, label="first")

    # Second death, under load: the owner of the probe key.
    workload.start(duration=120.0)
    second_at = time.monotonic()
    await driver.kill(owner)
    remaining = [n for n in survivors if n != owner]
    ring2 = await converge(
        session, driver, report, label="second_death", expected=peers(driver, remaining)
    )
    await sleep_under_fault(max(0.0, second_at + LOAD_AFTER_DEATH - time.monotonic()))
    await workload.stop()
    record_load(report, workload)
    acked = await check_acknowledged(session, driver.endpoints(), workload, report)
    replicas = await check_replicas(session, driver, workload, report)
    report.add(converge_seconds=round(time.monotonic() - second_at - acked.seconds, 2))

    report.add(
        headline=f"3 copies restored {report.figures['restore_seconds']:.0f} s after the "
        f"first death ({restored.report.replicas_ok}/{restored.report.replicas_expected})"
    )
    assert ring1.converged, f"first death: {ring1.detail}"
    assert restored.report.complete, (
        f"N copies not restored after the first death: {restored.report.examples[:5]}"
    )
    assert first.lost == 0 and first.unreadable == 0, first.examples[:5]
    assert_no_loss(report, ring2, acked, replicas)
