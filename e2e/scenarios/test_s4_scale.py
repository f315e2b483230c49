"""Scenario 4: scale 3 -> 5 -> 3 under load.

Scale up: two nodes are added one after the other (each joins through the peers file and
must be ready — its initial pull done — and the ring settled before the next). Scale down:
two of the *original* nodes are removed one after the other with SIGTERM, so the data
written before the scale up has to move twice.

Data moved: the ring says how many partition replicas must move for a membership change
(``Ring.diff(old, new, N).moved_replicas``; adding one node to n moves about 1/(n+1) of
them). The load first writes every key once, so the data set keeps its size (later writes
overwrite); then, for each phase, the records the nodes report having received
(``/cluster`` -> ``handoff.partitions.records_received``) are compared with the records
held (``peer_ring_kv_keys`` summed over nodes, i.e. keys x N) and with the ring's ideal
fraction, summed over the two single-node steps of the phase; and with the records that
actually differed (``records_applied``: received records that changed the receiver's
store), the measure of a repair that moves only what differs. Bytes are reported too
(``bytes_received`` against ``peer_ring_kv_size_bytes``; their accounting differs, so the
bound is on records). The new nodes' share of the data after the scale up is checked
against their share of the ring.
"""

from __future__ import annotations

import itertools
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
    record_load,
    ring_of,
    warm_up,
)
from e2e.workload import Workload, WorkloadConfig
from peer_ring.core import Ring

#: "Near 1/n": the measured fraction of records moved may exceed the ring's ideal by this
#: factor at most. The ring's ideal counts the data set once; under this workload (every one
#: of 1,000 hot keys rewritten every second or two) a joining node also catches up on the
#: writes that landed on the old replicas while the nodes' rings disagreed (the peers file
#: is polled once a second), each of which is a record it really lacks. Measured with delta
#: transfers (seven runs, e2e/README.md): 1.36x-1.71x on scale up, 0.90x-0.96x on scale
#: down (with whole-bucket transfers: 2.4x-7.5x on scale up). The bound leaves room for a
#: slower machine, where rings disagree longer and more writes need catching up.
MOVED_FACTOR_MAX = 3.0
#: Records received per record that changed the receiver's store (``records_applied``):
#: the issue's "within 1.2x of what actually differs". Measured 1.000-1.006.
RECEIVED_PER_APPLIED_MAX = 1.2
#: The new nodes' share of the data may differ from their share of the ring by this much.
SHARE_TOLERANCE = 0.5

Figures = dict[str, dict[str, float]]


def _sum(figures: Figures, key: str, names: list[str]) -> float | None:
    values = [figures.get(n, {}).get(key) for n in names]
    if not values or any(v is None for v in values):
        return None
    return sum(v for v in values if v is not None)


def _ideal(rings: list[Ring], replication: int) -> float:
    """Fraction of all replicas the ring moves along ``rings`` (one step per change)."""
    moved = sum(a.diff(b, replication).moved_replicas for a, b in itertools.pairwise(rings))
    return moved / (rings[0].partitions * replication)


def _moved(
    label: str, before: Figures, after: Figures, receivers: list[str], ideal: float
) -> dict[str, Any]:
    """Figures of one phase: ideal and measured fractions of the data moved."""
    out: dict[str, Any] = {f"{label}_ideal_moved_fraction": round(ideal, 4)}
    for unit, held_key, received_key in (
        ("records", "keys", "records_received"),
        ("bytes", "size_bytes", "bytes_received"),
    ):
        held = _sum(before, held_key, list(before))
        received = _sum(after, received_key, receivers)
        if held is None or received is None or not held:
            out[f"{label}_moved_{unit}_fraction"] = None
            continue
        moved = received - sum(before.get(n, {}).get(received_key, 0.0) for n in receivers)
        out[f"{label}_{unit}_moved"] = int(moved)
        out[f"{label}_{unit}_held_before"] = int(held)
        out[f"{label}_moved_{unit}_fraction"] = round(moved / held, 4)
    # What actually differed: the received records that changed the receiver's store
    # (newer than, or missing from, what it held); received / applied is the waste factor.
    applied = _sum(after, "records_applied", receivers)
    if applied is not None and f"{label}_records_moved" in out:
        applied -= sum(before.get(n, {}).get("records_applied", 0.0) for n in receivers)
        out[f"{label}_records_applied"] = int(applied)
        if applied:
            out[f"{label}_received_per_applied"] = round(out[f"{label}_records_moved"] / applied, 3)
    # What the delta transfers cost besides the records: the version lists sent.
    versions = _sum(after, "versions_bytes_sent", receivers)
    if versions is not None:
        versions -= sum(before.get(n, {}).get("versions_bytes_sent", 0.0) for n in receivers)
        out[f"{label}_versions_bytes_sent"] = int(versions)
    return out


async def test_s4_scale_three_five_three(
    make_driver: DriverFactory,
    session: aiohttp.ClientSession,
    report: ScenarioReport,
    run_id: str,
) -> None:
    """scale 3 -> 5 -> 3 under load: 0 lost, N replicas at the end, data moved near 1/n."""
    driver: ClusterDriver = await make_driver(capacity=5)
    report.driver = driver.describe()
    original = await driver.start(3)
    config = WorkloadConfig()
    workload = Workload(session, driver.endpoints, config, prefix=f"{run_id}:s4")
    workload.start(duration=300.0)
    await warm_up(workload, report)
    assert await workload.wait_all_keys(60.0), "the load did not write every key once"

    # Scale up 3 -> 4 -> 5.
    rings = [await ring_of(session, driver)]
    before_up = await node_figures(session, driver.endpoints())
    up_at = time.monotonic()
    added: list[str] = []
    for step in (1, 2):
        added.append(await driver.add_node())
        up = await converge(session, driver, report, label=f"scale_up_{step}")
        assert up.converged, f"scale up step {step} did not converge: {up.detail}"
        rings.append(await ring_of(session, driver))
    report.add(scale_up_seconds=round(time.monotonic() - up_at, 2), added=added)
    after_up = await node_figures(session, driver.endpoints())
    ideal_up = _ideal(rings, config.replication)
    report.add(**_moved("scale_up", before_up, after_up, driver.members(), ideal_up))
    ring5 = rings[-1]
    held_new = _sum(after_up, "keys", added)
    held_all = _sum(after_up, "keys", driver.members())
    ideal_share = sum(len(ring5.partitions_of(driver.endpoint(n).peer, 3)) for n in added) / (
        ring5.partitions * 3
    )
    share = held_new / held_all if held_new is not None and held_all else None
    report.add(
        scale_up_new_nodes_share=None if share is None else round(share, 4),
        scale_up_ideal_share=round(ideal_share, 4),
    )

    # Scale down 5 -> 4 -> 3: remove two original nodes, gracefully, one after the other.
    down_at = time.monotonic()
    rings = [ring5]
    stops = []
    for step, name in enumerate(original[:2], start=1):
        stops.append(await driver.remove_node(name))
        down = await converge(session, driver, report, label=f"scale_down_{step}")
        if down.converged:
            rings.append(await ring_of(session, driver))
    report.add(
        removed=original[:2],
        leave_seconds=[round(s.seconds, 2) for s in stops],
        leave_exit_status=[s.exit_status for s in stops],
        leave_forced=[s.forced for s in stops],
    )
    await workload.stop()
    record_load(report, workload)
    ring, acked, replicas = await final_check(session, driver, workload, report, since=down_at)
    report.add(scale_down_seconds=round(time.monotonic() - down_at, 2))
    if ring.converged and len(rings) == 3:
        after_down = await node_figures(session, driver.endpoints())
        ideal_down = _ideal(rings, config.replication)
        report.add(**_moved("scale_down", after_up, after_down, driver.members(), ideal_down))

    moved_up = report.figures.get("scale_up_moved_records_fraction")
    waste_up = report.figures.get("scale_up_received_per_applied")
    report.add(
        headline=f"3->5: new nodes hold {share or 0:.1%} (ring: {ideal_share:.1%}); records "
        "moved "
        + (f"{moved_up:.1%}" if moved_up is not None else "n/a")
        + f" (ideal {ideal_up:.1%})"
        + (f", {waste_up:.3f} received per record that differed" if waste_up else "")
    )
    assert not any(s.forced for s in stops), "a leaving node had to be killed"
    assert_no_loss(report, ring, acked, replicas)
    for label in ("scale_up", "scale_down"):
        measured = report.figures.get(f"{label}_moved_records_fraction")
        ideal = report.figures.get(f"{label}_ideal_moved_fraction")
        if measured is None or ideal is None:
            report.note(f"{label}: data moved not measured (no records_received in /cluster)")
            continue
        assert measured <= MOVED_FACTOR_MAX * ideal + 0.02, (
            f"{label}: moved {measured:.1%} of the records, the ring's ideal is {ideal:.1%}"
        )
        waste = report.figures.get(f"{label}_received_per_applied")
        if waste is None:
            report.note(f"{label}: records_applied not reported by the nodes")
            continue
        assert waste <= RECEIVED_PER_APPLIED_MAX, (
            f"{label}: {waste:.2f} records received per record that differed"
        )
    if share is not None:
        assert abs(share - ideal_share) <= SHARE_TOLERANCE * ideal_share, (
            f"new nodes hold {share:.1%} of the data, the ring gives them {ideal_share:.1%}"
        )
