"""``tools/bench --rate`` (benchlib._load): the open-loop schedules of a run's processes.

Every process of a run shares the schedule's start; with the same phase they would all
start an operation at the same instants (N at once every N intervals of the total rate).
Staggered, the processes' operations together are evenly spaced at the total rate. Pure
arithmetic on the due times and the worker's phase: no timing assertion."""

from __future__ import annotations

import importlib
import itertools
import sys
from pathlib import Path
from types import ModuleType

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"


@pytest.fixture(scope="module")
def load() -> ModuleType:
    sys.path.insert(0, str(TOOLS))
    try:
        return importlib.import_module("benchlib._load")
    finally:
        sys.path.remove(str(TOOLS))


def _merged(load: ModuleType, processes: int, total_rate: float, phases: list[float]) -> list[int]:
    interval = 1e9 / (total_rate / processes)
    return sorted(
        load.due_ns(1_000_000_000, i, interval, phase) for phase in phases for i in range(300)
    )


@pytest.mark.parametrize("processes", [1, 3, 5])
@pytest.mark.parametrize("total_rate", [1000.0, 3000.0, 6000.0])
def test_staggered_processes_are_evenly_spaced_at_the_total_rate(
    load: ModuleType, processes: int, total_rate: float
) -> None:
    dues = _merged(load, processes, total_rate, [k / processes for k in range(processes)])
    gaps = [b - a for a, b in itertools.pairwise(dues)]
    expected = 1e9 / total_rate
    # int() truncation: each gap is within a nanosecond of the total rate's interval.
    assert all(abs(gap - expected) <= 1 for gap in gaps)


def test_lockstep_processes_start_together(load: ModuleType) -> None:
    dues = _merged(load, 3, 3000.0, [0.0, 0.0, 0.0])
    # Three operations at each instant, one instant every three intervals.
    assert dues[0] == dues[1] == dues[2] < dues[3]
    assert dues[3] - dues[0] == pytest.approx(3 * 1e9 / 3000.0, abs=1)


def test_the_workload_staggers_by_default(load: ModuleType) -> None:
    assert load.Workload().stagger is True
    assert load.Workload(stagger=False).stagger is False
