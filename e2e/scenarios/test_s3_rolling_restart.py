"""Scenario 3: rolling restart of all 5 nodes, one at a time, under load.

Each node gets SIGTERM (graceful leave: it hands its partitions off, then exits), starts
again with an empty memory, and must be ready (joined and synced) before the next one goes
— what a Kubernetes rolling update with ``maxUnavailable: 0`` does.
"""

from __future__ import annotations

import time

import aiohttp

from e2e.report import ScenarioReport
from e2e.settings import DriverFactory
from e2e.steps import assert_no_loss, final_check, record_load, warm_up
from e2e.workload import Workload, WorkloadConfig


async def test_s3_rolling_restart_of_five(
    make_driver: DriverFactory,
    session: aiohttp.ClientSession,
    report: ScenarioReport,
    run_id: str,
) -> None:
    """rolling restart of all 5 nodes, one at a time (wait ready each time): 0 lost."""
    driver = await make_driver(capacity=5)
    report.driver = driver.describe()
    await driver.start(5)
    workload = Workload(session, driver.endpoints, WorkloadConfig(), prefix=f"{run_id}:s3")
    workload.start(duration=300.0)
    await warm_up(workload, report)

    durations: dict[str, float] = {}
    last = time.monotonic()
    for name in list(driver.members()):
        started = time.monotonic()
        new_name = await driver.restart(name, graceful=True)
        durations[new_name] = round(time.monotonic() - started, 2)
        last = time.monotonic()
    await workload.stop()
    report.add(restart_seconds=durations, rolling_seconds=round(sum(durations.values()), 1))
    record_load(report, workload)
    ring, acked, replicas = await final_check(session, driver, workload, report, since=last)
    report.add(
        headline=f"5 restarts in {sum(durations.values()):.0f} s "
        f"(slowest {max(durations.values()):.1f} s)"
    )
    assert_no_loss(report, ring, acked, replicas)
