"""Scenario 5: one of five nodes partitioned away for 30 s under load, then healed.

The partition cuts the node's peer traffic both ways (iptables, see
``e2e/drivers/netfault.py``) while its HTTP API stays reachable: clients next to it keep
sending it requests, which it cannot complete with a quorum. The others mark it down after
``down_after`` and re-replicate; it marks them down and ends up alone. After the heal, the
rings merge back and the replicas must converge: the scenario reports the time from the
heal until every acknowledged key has its 3 replicas with its latest acknowledged value.
"""

from __future__ import annotations

import time

import aiohttp

from e2e.report import ScenarioReport
from e2e.settings import DriverFactory
from e2e.steps import assert_no_loss, final_check, record_load, sleep_under_fault, warm_up
from e2e.workload import Workload, WorkloadConfig

PARTITION_SECONDS = 30.0


async def test_s5_partition_one_of_five(
    make_driver: DriverFactory,
    session: aiohttp.ClientSession,
    report: ScenarioReport,
    run_id: str,
) -> None:
    """one of 5 nodes partitioned for 30 s, then healed: 0 lost, replicas converge."""
    driver = await make_driver(capacity=5, partitions=True)
    report.driver = driver.describe()
    await driver.start(5)
    workload = Workload(session, driver.endpoints, WorkloadConfig(), prefix=f"{run_id}:s5")
    workload.start(duration=300.0)
    await warm_up(workload, report)

    victim = driver.members()[2]
    others = [n for n in driver.members() if n != victim]
    cut_at = time.monotonic()
    await driver.partition(victim)
    try:
        await sleep_under_fault(PARTITION_SECONDS)
    finally:
        healed_at = time.monotonic()
        await driver.heal(victim)
    await workload.stop()
    ok_others, failed_others = workload.ops_through(others, cut_at, healed_at)
    ok_victim, failed_victim = workload.ops_through([victim], cut_at, healed_at)
    report.add(
        victim=victim,
        partition_seconds=round(healed_at - cut_at, 1),
        ops_ok_via_others_during_partition=ok_others,
        ops_failed_via_others_during_partition=failed_others,
        ops_ok_via_victim_during_partition=ok_victim,
        ops_failed_via_victim_during_partition=failed_victim,
    )
    record_load(report, workload)
    ring, acked, replicas = await final_check(session, driver, workload, report, since=healed_at)
    report.add(
        headline=f"{ok_others}/{ok_others + failed_others} ops ok via the others during "
        f"the partition; {ok_victim}/{ok_victim + failed_victim} via the cut-off node"
    )
    assert_no_loss(report, ring, acked, replicas)
