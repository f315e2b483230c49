"""Rate limiter scenarios: real ``peer-ring-ratelimit serve`` processes under faults.

Each key has a fixed-window limit of ``LIMIT`` per 600 s and the load exhausts it; the
exact expectation is that each key admits exactly ``LIMIT`` hits in total (hits whose
answer was lost, ``unknown``, may account for the difference), that every admitted hit is
still counted by the cluster at the end (``recorded``), and that over-admission is at most
1% of the limit. The nodes run with ``--fail-policy fail-closed`` so that hits of a dead
owner's keys are refused (not estimated) until the ring has moved on.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from e2e.ratelimit_cluster import HitLoad, RateLimitCluster
from e2e.report import RESULTS_DIR, ScenarioReport
from peer_ring.kv._local_cluster import loopback_aliases_available


@pytest.fixture
async def cluster(
    request: pytest.FixtureRequest, require_component: Any
) -> AsyncIterator[RateLimitCluster]:
    c = RateLimitCluster(RESULTS_DIR / "logs" / request.node.name, capacity=5)
    require_component(
        "loopback aliases (127.x.y.z)",
        loopback_aliases_available(c.hosts),
        "Linux routes all of 127.0.0.0/8 to lo; other systems need aliases",
    )
    try:
        yield c
    finally:
        await c.close()


def check(
    report: ScenarioReport,
    v: dict[str, Any],
    *,
    exhausted: bool = True,
    forgotten: float = 0.0,
    lost_answers: float = 0.0,
) -> None:
    """``forgotten``: the share of the limit that may be admitted but not recorded.
    ``lost_answers``: the share of the limit that may be counted by the cluster but answered
    ``fail-closed`` (a hit the owner decided, its state already on the replica, whose answer
    was lost when the owner was killed: the forwarder applies its fail policy; README, "Not
    done", the ambiguous forwarded hit)."""
    report.add(**{k: val for k, val in v.items() if k != "per_key"}, per_key=v["per_key"])
    report.add(headline=f"over-admission {v['over_admission_max']} ({v['over_admission_pct']}%)")
    for key, f in v["per_key"].items():
        # Nothing admitted was forgotten (beyond the allowance): the cluster still counts
        # every admitted hit.
        assert f["admitted"] - f["recorded"] <= v["limit"] * forgotten, (key, f)
        # At most 1% over the limit (the target), and the cluster never counts more.
        assert f["admitted"] <= v["limit"] * 1.01, (key, f)
        if exhausted:
            assert f["recorded"] == v["limit"], (key, f)
            ambiguous = min(f["fail_closed"], v["limit"] * lost_answers)
            assert f["admitted"] + f["unknown"] + ambiguous >= v["limit"], (key, f)


async def test_ratelimit_kill9_of_an_owner_under_load(
    cluster: RateLimitCluster, report: ScenarioReport, run_id: str
) -> None:
    """kill -9 the owner of a key mid-window under load: its replica continues the count."""
    await cluster.start(3)
    keys = [f"{run_id}:k9:{i}" for i in range(4)]
    load = HitLoad(cluster, keys, limit=300)
    load.start(duration=60.0)
    await load.until_used(0.3)
    victim = await cluster.owner(keys[0])
    killed = time.monotonic()
    await cluster.kill(victim)
    report.add(victim=f"n{victim + 1}", admitted_before_kill=sum(load.admitted.values()))
    await load.until_exhausted()
    await load.stop()
    report.add(seconds_after_kill=round(time.monotonic() - killed, 1))
    # A run (load average 15-20) counted 300 of 300 on a key with 299 admitted, 0 unknown
    # and 121 fail-closed: one decided hit's answer died with the owner.
    check(report, await load.verdict(), lost_answers=0.01)


async def test_ratelimit_rolling_restart_under_load(
    cluster: RateLimitCluster, report: ScenarioReport, run_id: str
) -> None:
    """Restart every node in turn (SIGTERM = graceful leave, fresh process) under load."""
    await cluster.start(3)
    keys = [f"{run_id}:rr:{i}" for i in range(4)]
    load = HitLoad(cluster, keys, limit=1000)
    load.start(duration=90.0)
    await load.until_used(0.1)
    started = time.monotonic()
    for i in range(3):
        await cluster.restart(i)
    report.add(
        restart_seconds=round(time.monotonic() - started, 1),
        admitted_during_restarts=sum(load.admitted.values()),
    )
    await load.until_exhausted()
    await load.stop()
    # Each restart is a ring change too: while two rings disagree (about a second), two
    # nodes may each decide one hit of a key as its owner (README, "Not done"), as in the
    # scale scenario below. Seen once: 1001 of 1000 admitted (1000 recorded) in the first
    # run after the owner began sending states with its answers; the next three runs were
    # exact. Whether that change makes the race more frequent is not measured; the state it
    # sends is the one a replication message carried. The promise: at most 1% over.
    check(report, await load.verdict(), forgotten=0.01)


async def test_ratelimit_scale_3_5_3_under_load(
    cluster: RateLimitCluster, report: ScenarioReport, run_id: str
) -> None:
    """Scale 3 -> 5 -> 3 nodes under load; states move with their partitions."""
    await cluster.start(3)
    keys = [f"{run_id}:sc:{i}" for i in range(4)]
    load = HitLoad(cluster, keys, limit=1000)
    load.start(duration=90.0)
    await load.until_used(0.1)
    started = time.monotonic()
    await cluster.add(3)
    await cluster.add(4)
    up = time.monotonic()
    await cluster.remove(4)
    await cluster.remove(3)
    report.add(
        scale_up_seconds=round(up - started, 1),
        scale_down_seconds=round(time.monotonic() - up, 1),
        admitted_during_scaling=sum(load.admitted.values()),
    )
    await load.until_exhausted()
    await load.stop()
    # While a scale step's rings disagree (about a second), two nodes may each decide one
    # hit of a key as its owner, and one of the two states wins the merge: a CI run admitted
    # 1001 of 1000 with 1000 recorded. The promise is the issue's: at most 1% over the limit
    # (checked by check()); exactness across ownership changes needs fencing (README).
    check(report, await load.verdict(), forgotten=0.01)
