"""``tools/bench ratelimit --rates`` (benchlib.ratelimit_load.open_loop): the hits each
process starts, and when they count as scheduled.

The open loop starts its hits from a thread that sleeps until each scheduled time (the
default) or from the loop's own timer (rounds 1-7), shifted by the process's phase. What is
asserted is the schedule itself (how many hits, at which scheduled times, started in
order, each measured from its scheduled time or later): no timing assertion.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"
RATE = 100.0
INTERVAL = 1.0 / RATE


@pytest.fixture(scope="module")
def rl_load() -> ModuleType:
    sys.path.insert(0, str(TOOLS))
    try:
        return importlib.import_module("benchlib.ratelimit_load")
    finally:
        sys.path.remove(str(TOOLS))


class Marks:
    """A stand-in for the trace: records each hit's scheduled time (ns) by key."""

    def __init__(self) -> None:
        self.active = False
        self.scheduled: list[int] = []

    def mark(self, stage: str, keys: Any, now: int | None = None) -> None:
        assert stage == "scheduled" and now is not None
        self.scheduled.append(now)


async def _run(rl_load: ModuleType, arrivals: str, phase: float) -> tuple[dict[str, Any], Marks]:
    marks = Marks()
    started: list[float] = []

    async def hit(key: str) -> bool:
        started.append(time.monotonic())
        await asyncio.sleep(0)
        return True

    start_at = time.time() + 0.05
    t0 = time.monotonic() + 0.05
    # Warmup and window end between two scheduled hits (no float ties at the bounds):
    # hits 0-30 are started (31), hits 11-30 measured (20).
    out = await rl_load.open_loop(
        hit, ["k"], RATE, start_at, 0.105, 0.2, 0, marks, phase=phase, arrivals=arrivals
    )
    first = marks.scheduled[0] / 1e9
    # The first hit is scheduled at the shared start plus the phase (clocks read a few
    # microseconds apart: wall time for start_at, monotonic here).
    assert first - t0 == pytest.approx(phase * INTERVAL, abs=0.001)
    # The count follows the schedule alone, whatever the machine's load.
    assert len(started) == len(marks.scheduled) == 31
    if arrivals == "thread":
        # The thread hands a hit over only once its time has come (the timer may be early).
        assert all(s >= t / 1e9 - 1e-6 for s, t in zip(started, marks.scheduled, strict=True))
    sched = marks.scheduled
    gaps = {round((b - a) / 1e9 / INTERVAL, 6) for a, b in itertools.pairwise(sched)}
    assert gaps == {1.0}
    return out, marks


@pytest.mark.parametrize("phase", [0.0, 1 / 3, 2 / 3])
async def test_thread_arrivals_start_every_scheduled_hit_never_early(
    rl_load: ModuleType, phase: float
) -> None:
    out, _ = await _run(rl_load, "thread", phase)
    assert out["errors"] == 0
    # Measured hits: those scheduled from the end of the warmup on.
    assert out["decisions"] == 20
    assert out["hist"] is not None


async def test_timer_arrivals_keep_the_old_generator(rl_load: ModuleType) -> None:
    out, _ = await _run(rl_load, "timer", 0.0)
    assert out["decisions"] == 20 and out["errors"] == 0


async def test_unknown_arrivals_are_refused(rl_load: ModuleType) -> None:
    async def hit(key: str) -> bool:
        return True

    with pytest.raises(ValueError, match="arrivals"):
        await rl_load.open_loop(hit, ["k"], RATE, time.time(), 0.0, 0.01, 0, arrivals="nope")
