"""Scenario 1: kill -9 one of three nodes under load (N=3, W=2, R=2), on each transport."""

from __future__ import annotations

import time

import aiohttp
import pytest

from e2e.report import ScenarioReport
from e2e.settings import DriverFactory
from e2e.steps import (
    assert_no_loss,
    check_acknowledged,
    final_check,
    record_load,
    sleep_under_fault,
    warm_up,
)
from e2e.workload import Workload, WorkloadConfig

#: Seconds the node stays dead while the load goes on.
DEAD_SECONDS = 10.0


@pytest.mark.parametrize("transport", ["grpc", "tcp"])
async def test_s1_kill9_one_of_three(
    transport: str,
    make_driver: DriverFactory,
    session: aiohttp.ClientSession,
    report: ScenarioReport,
    run_id: str,
) -> None:
    """kill -9 one of 3 nodes under load, N=3 W=2 R=2: no acknowledged write lost."""
    driver = await make_driver(capacity=3, serve_args=("--transport", transport))
    report.driver = driver.describe()
    started = time.monotonic()
    await driver.start(3)
    report.add(start_seconds=round(time.monotonic() - started, 2))
    workload = Workload(
        session, driver.endpoints, WorkloadConfig(), prefix=f"{run_id}:s1:{transport}"
    )

    # Phase 1: load, then kill -9 the last node, load on with it dead.
    workload.start(duration=120.0)
    await warm_up(workload, report)
    victim = driver.members()[-1]
    killed_at = time.monotonic()
    await driver.kill(victim)
    await sleep_under_fault(DEAD_SECONDS)
    await workload.stop()
    report.add(victim=victim, dead_seconds=round(time.monotonic() - killed_at, 1))

    # While it is dead: every acknowledged write readable through the two survivors.
    dead = await check_acknowledged(session, driver.endpoints(), workload, report, label="dead")

    # Phase 2: restart it (empty memory) under load: it syncs while writes keep coming.
    workload.start(duration=120.0)
    restarted_at = time.monotonic()
    await driver.restart(victim, graceful=False)
    ready_at = time.monotonic()
    report.add(restart_ready_seconds=round(ready_at - restarted_at, 2))
    await workload.stop()
    record_load(report, workload)
    ring, acked, replicas = await final_check(session, driver, workload, report, since=ready_at)

    report.add(
        headline=f"{victim} dead {DEAD_SECONDS:g} s: {dead.lost} lost while dead, "
        f"restarted ready in {ready_at - restarted_at:.1f} s"
    )
    assert dead.lost == 0 and dead.unreadable == 0, f"while node dead: {dead.examples[:5]}"
    assert_no_loss(report, ring, acked, replicas)
