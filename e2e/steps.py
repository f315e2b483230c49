"""Steps shared by the scenarios: load phases, the final check, ring helpers, figures.

Each helper records what it measured into the scenario's :class:`~e2e.report.ScenarioReport`
before any assertion, so a failing scenario still leaves its figures behind.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import aiohttp

from e2e.api import get_metrics
from e2e.checker import (
    AckCheck,
    Convergence,
    ReplicaConvergence,
    cluster_view,
    verify_acknowledged,
    wait_converged,
    wait_replicas,
)
from e2e.drivers.base import ClusterDriver, Endpoint
from e2e.report import ScenarioReport
from e2e.workload import Workload
from peer_ring.core import Ring

#: Deadline of convergence waits (ring agreement, replicas), seconds.
CONVERGE_WITHIN = 150.0
_NODE_METRICS = (("peer_ring_kv_size_bytes", "size_bytes"), ("peer_ring_kv_keys", "keys"))

#: Writes acknowledged before a fault is injected (the load must be flowing).
WARMUP_WRITES = 200


def peers(driver: ClusterDriver, names: Sequence[str] | None = None) -> list[str]:
    """Peer addresses (ring identities) of ``names`` (default: every member)."""
    chosen = driver.members() if names is None else names
    return [driver.endpoint(n).peer for n in chosen]


def name_of(driver: ClusterDriver, peer: str) -> str:
    """The driver's name of the node whose ring identity is ``peer``."""
    for endpoint in driver.all_endpoints():
        if endpoint.peer == peer:
            return endpoint.name
    raise KeyError(peer)


async def ring_of(session: aiohttp.ClientSession, driver: ClusterDriver) -> Ring:
    """The ring the serving nodes agree on (fails when they do not)."""
    view = await cluster_view(session, driver.endpoints())
    members = view.agreed_members()
    assert members is not None, f"nodes disagree on the ring: {view.member_sets()}"
    partitions = {d["partitions"] for d in view.documents.values()}
    assert len(partitions) == 1, partitions
    zones: dict[str, str] = {}
    for document in view.documents.values():
        zones.update(document.get("zones") or {})
    return Ring.build(members, partitions.pop(), zones or None)


async def warm_up(workload: Workload, report: ScenarioReport, within: float = 60.0) -> None:
    """Wait until the load is flowing (:data:`WARMUP_WRITES` acknowledged writes)."""
    ok = await workload.wait_acknowledged(WARMUP_WRITES, within)
    summary = workload.summary()
    assert ok, f"the load never got going: {summary}"


def record_load(report: ScenarioReport, workload: Workload) -> dict[str, Any]:
    """Add the workload's operation counts to the report; returns them."""
    summary = workload.summary()
    report.add(
        acknowledged_writes=workload.acknowledged_writes,
        writes=summary["writes"],
        failed_ops=summary["failed_ops"],
        failed_writes=summary["failed_writes"],
        unanswered_writes=summary["unanswered_writes"],
        reads=summary["reads"],
        failed_reads=summary["failed_reads"],
        stale_reads_during_load=summary["stale_reads"],
        failure_reasons=summary["failure_reasons"],
        failure_examples=summary["failure_examples"],
        keys=summary["keys"],
    )
    return summary


async def converge(
    session: aiohttp.ClientSession,
    driver: ClusterDriver,
    report: ScenarioReport,
    *,
    label: str = "converge",
    expected: Sequence[str] | None = None,
    within: float = CONVERGE_WITHIN,
) -> Convergence:
    """Wait until the serving nodes agree on the ring (``expected`` peers by default: every
    member); records ``<label>_ring_seconds``."""
    want = peers(driver) if expected is None else list(expected)
    result = await wait_converged(session, driver.endpoints, expected=want, within=within)
    report.add(**{f"{label}_ring_seconds": round(result.seconds, 2)})
    if not result.converged:
        report.note(f"{label}: ring did not converge within {within:g}s: {result.detail}")
    return result


async def check_acknowledged(
    session: aiohttp.ClientSession,
    endpoints: Sequence[Endpoint],
    workload: Workload,
    report: ScenarioReport,
    *,
    label: str = "",
) -> AckCheck:
    """Read back every acknowledged key (R=2) through ``endpoints``; records the figures
    (prefixed with ``label`` when given, else as the scenario's main ``lost``...)."""
    cfg = workload.config
    result = await verify_acknowledged(
        session,
        endpoints,
        workload.acknowledged_keys(),
        replication=cfg.replication,
        quorum=cfg.quorum,
    )
    figures = result.figures()
    if label:
        figures = {f"{label}_{k}": v for k, v in figures.items() if k != "acknowledged_writes"}
    report.add(**figures)
    return result


async def check_replicas(
    session: aiohttp.ClientSession,
    driver: ClusterDriver,
    workload: Workload,
    report: ScenarioReport,
    *,
    label: str = "",
    within: float = CONVERGE_WITHIN,
) -> ReplicaConvergence:
    """Wait until every acknowledged key has N good replicas; records the figures."""
    result = await wait_replicas(
        session,
        driver.endpoints,
        workload.acknowledged_keys(),
        replication=workload.config.replication,
        within=within,
    )
    figures = result.report.figures()
    expected = result.report.replicas_expected
    figures["replicas_ok_ratio"] = (
        round(result.report.replicas_ok / expected, 4) if expected else None
    )
    figures["replicas_seconds"] = round(result.seconds, 2)
    if label:
        figures = {f"{label}_{k}": v for k, v in figures.items()}
    report.add(**figures)
    return result


async def final_check(
    session: aiohttp.ClientSession,
    driver: ClusterDriver,
    workload: Workload,
    report: ScenarioReport,
    *,
    since: float,
    expected: Sequence[str] | None = None,
) -> tuple[Convergence, AckCheck, ReplicaConvergence]:
    """After the load stopped and faults healed: ring agreement, every acknowledged write
    readable, every key on N replicas. ``converge_seconds`` is measured from ``since`` (the
    heal / last fault) to the moment replicas are complete."""
    ring = await converge(session, driver, report, expected=expected)
    acked = await check_acknowledged(session, driver.endpoints(), workload, report)
    replicas = await check_replicas(session, driver, workload, report)
    if ring.converged and replicas.report.complete:
        # The replica wait started after the read-back, whose own duration is not part of
        # convergence: subtract it.
        report.add(
            converge_seconds=round(time.monotonic() - since - acked.seconds, 2),
        )
    return ring, acked, replicas


def assert_no_loss(
    report: ScenarioReport,
    ring: Convergence,
    acked: AckCheck,
    replicas: ReplicaConvergence | None,
) -> None:
    """The scenario's verdict: converged, nothing lost or unreadable, N replicas."""
    assert ring.converged, f"ring did not converge: {ring.detail}"
    assert acked.lost == 0, f"{acked.lost} acknowledged writes lost: {acked.examples[:5]}"
    assert acked.unreadable == 0, f"{acked.unreadable} keys unreadable: {acked.examples[:5]}"
    if replicas is not None:
        r = replicas.report
        assert r.complete, (
            f"{r.keys - r.complete_keys} of {r.keys} keys lack replicas after "
            f"{replicas.seconds:.0f}s ({r.replicas_missing} missing, {r.replicas_stale} stale, "
            f"{r.replicas_unreadable} unreadable{', ' + r.error if r.error else ''}): "
            f"{r.examples[:5]}"
        )


async def node_figures(
    session: aiohttp.ClientSession, endpoints: Sequence[Endpoint]
) -> dict[str, dict[str, float]]:
    """Per node: ``size_bytes``, ``keys`` (metrics) and the data-movement counters of
    ``/cluster`` (``bytes_received``, ``records_received``, ``records_applied``,
    ``versions_bytes_sent``) when exposed."""
    metrics = await asyncio.gather(*(get_metrics(session, e.url) for e in endpoints))
    view = await cluster_view(session, endpoints)
    out: dict[str, dict[str, float]] = {}
    for endpoint, values in zip(endpoints, metrics, strict=True):
        figures: dict[str, float] = {}
        if values is not None:
            for name, key in _NODE_METRICS:
                if name in values:
                    figures[key] = values[name]
        doc = view.documents.get(endpoint.name, {})
        handoff = doc.get("handoff")
        parts = handoff.get("partitions") if isinstance(handoff, dict) else None
        if isinstance(parts, dict):
            for key in (
                "bytes_received",
                "records_received",
                "records_applied",
                "versions_bytes_sent",
            ):
                if isinstance(parts.get(key), int | float):
                    figures[key] = float(parts[key])
        out[endpoint.name] = figures
    return out


async def sleep_under_fault(seconds: float) -> None:
    """The real duration of a fault (a partition lasts 30 s): a wait by nature, not a
    synchronisation, so a plain sleep."""
    await asyncio.sleep(seconds)
