"""Scenario 4: scale 3 -> 5 -> 3 under load.

Scale up: two nodes are added one after the other (each joins through the peers file and
must be ready — its initial pull done — before the next). Scale down: two of the *original*
nodes are removed one after the other with SIGTERM (graceful leave: they hand their data
off), so the data written before the scale up has to move twice.

Bytes moved: the ring says how many partition replicas must move for a membership change
(``Ring.diff(...).moved_replicas``; adding one node to n moves about 1/(n+1) of them). The
scenario compares that ideal fraction with what the nodes report having received
(``/cluster`` -> ``handoff.partitions.bytes_received``, when exposed) relative to the data
held, and with the share of the data the new nodes hold after the scale up (from
``/metrics`` ``peer_ring_kv_size_bytes``).
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from e2e.drivers.base import ClusterDriver
from e2e.report import ScenarioReport
from e2e.settings import DriverFactory
from e2e.steps import (
    assert_no_loss,
    converge,
    final_check,
    node_figures,
    peers,
    record_load,
    ring_of,
    warm_up,
)
from e2e.workload import Workload, WorkloadConfig
from peer_ring.core import Ring

#: "Near 1/n": the measured fraction of moved data may exceed the ring's ideal by this
#: factor at most (pulling every gained partition from two sources would already be 2x).
MOVED_FACTOR_MAX = 2.0
#: The new nodes' share of the data may differ from the ring's share by this fraction.
SHARE_TOLERANCE = 0.5


def _total(figures: dict[str, dict[str, float]], key: str, names: list[str]) -> float | None:
    values = [figures.get(n, {}).get(key) for n in names]
    if any(v is None for v in values):
        return None
    return sum(v for v in values if v is not None)


def _moved(
    label: str,
    before: dict[str, dict[str, float]],
    after: dict[str, dict[str, float]],
    receivers: list[str],
    old: Ring,
    new: Ring,
    replication: int,
) -> dict[str, Any]:
    """Figures of one membership change: ideal and measured fractions of data moved."""
    ideal = old.diff(new, replication).moved_replicas / (old.partitions * replication)
    figures: dict[str, Any] = {f"{label}_ideal_moved_fraction": round(ideal, 4)}
    held = _total(before, "size_bytes", list(before))
    received_before = sum(before.get(n, {}).get("bytes_received", 0.0) for n in receivers)
    received_after = _total(after, "bytes_received", receivers)
    if received_after is None or not held:
        figures[f"{label}_moved_fraction"] = None
        return figures
    # `held` counts every replica: it is N times the data, as the ideal fraction assumes.
    moved = received_after - received_before
    figures[f"{label}_bytes_moved"] = int(moved)
    figures[f"{label}_bytes_held_before"] = int(held)
    figures[f"{label}_moved_fraction"] = round(moved / held, 4)
    return figures


async def test_s4_scale_three_five_three(
    make_driver: DriverFactory,
    session: aiohttp.ClientSession,
    report: ScenarioReport,
    run_id: str,
) -> None:
    """scale 3 -> 5 -> 3 under load: 0 lost, N replicas at the end, bytes moved near 1/n."""
    driver: ClusterDriver = await make_driver(capacity=5)
    report.driver = driver.describe()
    original = await driver.start(3)
    config = WorkloadConfig()
    workload = Workload(session, driver.endpoints, config, prefix=f"{run_id}:s4")
    workload.start(duration=300.0)
    await warm_up(workload, report)

    # Scale up 3 -> 5.
    ring3 = await ring_of(session, driver)
    before_up = await node_figures(session, driver.endpoints())
    up_at = time.monotonic()
    added = [await driver.add_node(), await driver.add_node()]
    up = await converge(session, driver, report, label="scale_up")
    report.add(scale_up_seconds=round(time.monotonic() - up_at, 2), added=added)
    ring5 = await ring_of(session, driver)
    after_up = await node_figures(session, driver.endpoints())
    report.add(**_moved("scale_up", before_up, after_up, driver.members(), ring3, ring5, 3))
    held_new = _total(after_up, "size_bytes", added)
    held_all = _total(after_up, "size_bytes", driver.members())
    ideal_share = sum(len(ring5.partitions_of(driver.endpoint(n).peer, 3)) for n in added) / (
        ring5.partitions * 3
    )
    share = held_new / held_all if held_new is not None and held_all else None
    report.add(
        scale_up_new_nodes_share=None if share is None else round(share, 4),
        scale_up_ideal_share=round(ideal_share, 4),
    )

    # Scale down 5 -> 3: remove two original nodes, gracefully, one after the other.
    down_at = time.monotonic()
    removed = original[:2]
    stops = [await driver.remove_node(name) for name in removed]
    report.add(
        removed=removed,
        leave_seconds=[round(s.seconds, 2) for s in stops],
        leave_exit_status=[s.exit_status for s in stops],
        leave_forced=[s.forced for s in stops],
    )
    await workload.stop()
    record_load(report, workload)
    ring, acked, replicas = await final_check(
        session, driver, workload, report, since=down_at, expected=peers(driver)
    )
    report.add(scale_down_seconds=round(time.monotonic() - down_at, 2))
    if ring.converged:
        ring3b = await ring_of(session, driver)
        after_down = await node_figures(session, driver.endpoints())
        survivors = driver.members()
        report.add(
            **_moved("scale_down", after_up, after_down, survivors, ring5, ring3b, 3),
        )

    moved_up = report.figures.get("scale_up_moved_fraction")
    report.add(
        headline=f"3->5: new nodes hold {share or 0:.1%} (ring: {ideal_share:.1%}); moved "
        + (f"{moved_up:.1%}" if moved_up is not None else "n/a")
        + f" (ideal {report.figures['scale_up_ideal_moved_fraction']:.1%})"
    )
    assert up.converged, f"scale up did not converge: {up.detail}"
    assert not any(s.forced for s in stops), "a leaving node had to be killed"
    assert_no_loss(report, ring, acked, replicas)
    for label in ("scale_up", "scale_down"):
        measured = report.figures.get(f"{label}_moved_fraction")
        ideal = report.figures.get(f"{label}_ideal_moved_fraction")
        if measured is None or ideal is None:
            report.note(f"{label}: bytes moved not measured (no bytes_received in /cluster)")
            continue
        assert measured <= MOVED_FACTOR_MAX * ideal + 0.02, (
            f"{label}: moved {measured:.1%} of the data, ideal {ideal:.1%}"
        )
    if share is not None:
        assert abs(share - ideal_share) <= SHARE_TOLERANCE * ideal_share, (
            f"new nodes hold {share:.1%} of the data, the ring gives them {ideal_share:.1%}"
        )
