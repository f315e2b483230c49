"""``shrink`` of the simulator: the reduction a user gets for a failing seed.

The predicate stands in for "run the seed with this configuration and check it"; with a
known cause of failure, the shrunk configuration must keep exactly that cause and drop
every other fault kind, within the run budget.
"""

from __future__ import annotations

import dataclasses

import pytest

from peer_ring.core.testing.sim import LinkFaults, SimConfig, shrink

FULL = SimConfig(
    nodes=6,
    links=LinkFaults(loss=0.05, duplicate=0.02, min_delay=0.001, max_delay=0.01),
    max_skew=1.0,
    max_drift=1e-4,
    duration=20.0,
    crashes=True,
    partitions=True,
)


def test_keeps_only_the_cause_of_the_failure() -> None:
    runs: list[SimConfig] = []

    def fails(config: SimConfig) -> bool:
        runs.append(config)
        return config.crashes and config.nodes >= 4  # the bug needs a crash and 4 nodes

    smaller, steps = shrink(FULL, fails)
    assert smaller == SimConfig(
        nodes=4,
        links=LinkFaults(),
        max_skew=0.0,
        max_drift=0.0,
        duration=1.25,  # halved while above 2 s: 20, 10, 5, 2.5, 1.25
        crashes=True,
        partitions=False,
    )
    assert steps == [
        "no partitions",
        "no loss",
        "no duplicates",
        "no delay",
        "no drift",
        "no skew",
        "half the duration",
        "half the duration",
        "half the duration",
        "half the duration",
        "one node fewer",
        "one node fewer",
    ]
    # The only removals refused were the cause's: "no crashes" and the node below 4.
    refused = [c for c in runs if not (c.crashes and c.nodes >= 4)]
    assert {(c.crashes, c.nodes) for c in refused} == {
        (False, 6),
        (False, 5),
        (False, 4),
        (True, 3),
    }
    assert len(runs) <= 40


def test_each_fault_kind_is_kept_when_it_is_the_cause() -> None:
    causes = {
        "loss": lambda c: c.links.loss > 0,
        "duplicate": lambda c: c.links.duplicate > 0,
        "delay": lambda c: c.links.max_delay > 0,
        "skew": lambda c: c.max_skew > 0,
        "drift": lambda c: c.max_drift > 0,
        "partitions": lambda c: c.partitions,
        "duration": lambda c: c.duration > 10,
    }
    for name, cause in causes.items():
        smaller, _ = shrink(FULL, cause)
        assert cause(smaller), name
        # Everything else went: no other fault kind survives the shrink.
        others = [n for n, other in causes.items() if n != name and other(smaller)]
        assert others == [], (name, smaller)
        assert not smaller.crashes and smaller.nodes == 3, name


def test_a_configuration_nothing_can_be_removed_from_is_returned_unchanged() -> None:
    calls = 0

    def fails(config: SimConfig) -> bool:
        nonlocal calls
        calls += 1
        return config == FULL  # any change makes the failure go away

    smaller, steps = shrink(FULL, fails)
    assert smaller == FULL and steps == []
    assert calls == 9  # each of the nine reductions tried once, none kept


@pytest.mark.parametrize("budget", [0, 1, 3])
def test_the_budget_bounds_the_runs(budget: int) -> None:
    calls = 0

    def fails(config: SimConfig) -> bool:
        nonlocal calls
        calls += 1
        return True  # every reduction keeps failing: only the budget stops it

    smaller, steps = shrink(FULL, fails, budget=budget)
    assert calls == budget == len(steps)
    assert smaller == (FULL if budget == 0 else smaller)
    if budget:
        assert steps[0] == "no crashes" and not smaller.crashes


def test_the_budget_also_stops_within_a_pass() -> None:
    tried: list[SimConfig] = []

    def fails(config: SimConfig) -> bool:
        tried.append(config)
        return not config.partitions  # only the second reduction keeps the failure

    assert shrink(FULL, fails, budget=1) == (FULL, [])
    assert [c.crashes for c in tried] == [False]  # "no crashes" tried, then out of budget


def test_a_quiet_configuration_has_nothing_to_shrink() -> None:
    quiet = SimConfig(
        nodes=3,
        links=LinkFaults(),
        max_skew=0.0,
        max_drift=0.0,
        duration=2.0,
        crashes=False,
        partitions=False,
    )
    calls: list[SimConfig] = []
    assert shrink(quiet, lambda c: calls.append(c) or True) == (quiet, [])
    assert calls == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"loss": -0.1},
        {"loss": 1.5},
        {"duplicate": 2.0},
        {"min_delay": -1.0},
        {"min_delay": 0.2, "max_delay": 0.1},
    ],
)
def test_link_faults_refuse_impossible_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"probabilities|min_delay"):
        LinkFaults(**kwargs)


def test_link_faults_accept_the_bounds() -> None:
    faults = LinkFaults(loss=1.0, duplicate=0.0, min_delay=0.5, max_delay=0.5)
    assert dataclasses.astuple(faults) == (1.0, 0.0, 0.5, 0.5)
