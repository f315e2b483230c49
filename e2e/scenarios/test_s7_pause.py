"""Scenario 7: a node paused (SIGSTOP) for longer than the request deadline, then resumed.

Three nodes, so every key has the paused node among its 3 replicas: a coordinator that
waited for it would fail every operation. With W=R=2 the two others must keep serving
(clients route around the paused node, as a health-checking load balancer would). The
pause (8 s) is longer than the request deadline (2 s) but shorter than the failure
detector's ``down_after`` (10 s): the ring does not change, this is the timeout and
sloppy-quorum path. After SIGCONT the node must catch up (hinted handoff, read repair,
anti-entropy) until every key has its 3 replicas again, and serve correct reads itself.
"""

from __future__ import annotations

import time

import aiohttp

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

PAUSE_SECONDS = 8.0
#: Share of the operations sent to the other nodes during the pause that must succeed.
MIN_OK_RATIO = 0.95


async def test_s7_paused_node_others_keep_serving(
    make_driver: DriverFactory,
    session: aiohttp.ClientSession,
    report: ScenarioReport,
    run_id: str,
) -> None:
    """a node paused (SIGSTOP) longer than the request deadline: others keep serving; it
    catches up after SIGCONT."""
    driver = await make_driver(capacity=3)
    report.driver = driver.describe()
    await driver.start(3)
    workload = Workload(session, driver.endpoints, WorkloadConfig(), prefix=f"{run_id}:s7")
    workload.start(duration=120.0)
    await warm_up(workload, report)

    victim = driver.members()[1]
    others = [n for n in driver.members() if n != victim]
    paused_at = time.monotonic()
    await driver.pause(victim)
    try:
        await sleep_under_fault(PAUSE_SECONDS)
    finally:
        resumed_at = time.monotonic()
        await driver.resume(victim)
    await workload.stop()
    ok, failed = workload.ops_through(others, paused_at, resumed_at)
    ratio = ok / (ok + failed) if ok + failed else 0.0
    report.add(
        victim=victim,
        pause_seconds=round(resumed_at - paused_at, 1),
        ops_ok_during_pause=ok,
        ops_failed_during_pause=failed,
        ok_ratio_during_pause=round(ratio, 4),
    )
    record_load(report, workload)
    ring, acked, replicas = await final_check(session, driver, workload, report, since=resumed_at)
    # The paused node itself coordinates correct quorum reads again.
    own = await check_acknowledged(
        session, [driver.endpoint(victim)], workload, report, label="via_paused_node"
    )

    report.add(
        headline=f"{ok}/{ok + failed} ops ok via the others during the {PAUSE_SECONDS:g} s pause"
    )
    assert ok > 0 and ratio >= MIN_OK_RATIO, (
        f"during the pause only {ok} of {ok + failed} operations through the others "
        f"succeeded: {workload.summary(paused_at, resumed_at)['failure_reasons']}"
    )
    assert_no_loss(report, ring, acked, replicas)
    assert own.lost == 0 and own.unreadable == 0, own.examples[:5]
