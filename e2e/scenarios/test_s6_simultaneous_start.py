"""Scenario 6: five nodes started at the same moment form one ring, 20 times in a row.

Every process is spawned before any is waited for; once all are ready, every node's
``GET /cluster`` must list the same five members (polled for a short while: a node may
briefly suspect a peer that was still binding its port). A split ring here would mean two
clusters silently owning the same keys.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import aiohttp

from e2e.checker import cluster_view
from e2e.drivers.base import ClusterDriver
from e2e.report import ScenarioReport
from e2e.settings import RING_TRIALS, DriverFactory
from e2e.steps import peers

#: Trials (PEER_RING_E2E_RING_TRIALS overrides; pods are slower to start than processes).
TRIALS = RING_TRIALS
#: Seconds all nodes may take to agree once ready.
AGREE_WITHIN = 20.0


async def _one_trial(
    driver: ClusterDriver, session: aiohttp.ClientSession
) -> tuple[bool, float, float, str]:
    """(agreed, start seconds, agree seconds, detail) of one trial."""
    started = time.monotonic()
    await driver.start(5)
    ready = time.monotonic()
    want = frozenset(peers(driver))
    detail = ""
    while True:
        view = await cluster_view(session, driver.endpoints())
        if view.agreed_members() == want:
            return True, ready - started, time.monotonic() - ready, ""
        detail = f"{view.unreachable or {n: len(s) for n, s in view.member_sets().items()}}"
        if time.monotonic() - ready > AGREE_WITHIN:
            return False, ready - started, time.monotonic() - ready, detail
        await asyncio.sleep(0.2)


async def test_s6_five_nodes_started_together_form_one_ring(
    make_driver: DriverFactory,
    session: aiohttp.ClientSession,
    report: ScenarioReport,
) -> None:
    """five nodes started at the same moment form one ring (20 trials)."""
    outcomes: list[tuple[bool, float, float, str]] = []
    for _trial in range(TRIALS):
        driver = await make_driver(capacity=5)
        report.driver = driver.describe()
        try:
            outcomes.append(await _one_trial(driver, session))
        finally:
            await driver.close()
    agreed = [o for o in outcomes if o[0]]
    starts = [o[1] for o in outcomes]
    agrees = [o[2] for o in agreed]
    report.add(
        trials=len(outcomes),
        one_ring=len(agreed),
        split_or_late=len(outcomes) - len(agreed),
        start_seconds_median=round(statistics.median(starts), 2) if starts else None,
        start_seconds_max=round(max(starts), 2) if starts else None,
        agree_after_ready_seconds_max=round(max(agrees), 2) if agrees else None,
        failures=[o[3] for o in outcomes if not o[0]][:5],
    )
    report.add(headline=f"{len(agreed)}/{len(outcomes)} trials formed one ring")
    assert len(agreed) == TRIALS, f"{TRIALS - len(agreed)} of {TRIALS} trials without one ring"
