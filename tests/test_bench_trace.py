"""``tools/bench --trace`` (benchlib._trace): the attribution of slow operations, and the
wrapper that times the node's sync coroutines step by step. No timing assertion: the
traces below are synthetic, and the wrapped coroutine's steps are forced to be slow
enough to record by burning CPU, not by sleeping."""

from __future__ import annotations

import asyncio
import gc
import importlib
import json
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"


@pytest.fixture(scope="module")
def trace() -> ModuleType:
    sys.path.insert(0, str(TOOLS))
    try:
        return importlib.import_module("benchlib._trace")
    finally:
        sys.path.remove(str(TOOLS))


MS = 1_000_000


def _process(ops: list[tuple[int, int, str]], **events: Any) -> dict[str, Any]:
    return {
        "window": [0, 1000 * MS],
        "ops": ops,
        "gcs": events.get("gcs", []),
        "stalls": events.get("stalls", []),
        "steps": events.get("steps", []),
        "owners": events.get("owners", {}),
    }


def test_attribute_gives_each_slow_op_the_cause_covering_most_of_it(trace: ModuleType) -> None:
    fast = [(i * MS, MS // 2, "k") for i in range(300)]
    slow = [
        (400 * MS, 10 * MS, "gc-key"),  # a 6 ms GC in the replica (process 1)
        (500 * MS, 10 * MS, "k"),  # a 1 ms sync step and an 8 ms descheduled stall
        (600 * MS, 10 * MS, "k"),  # an 8 ms busy stall
        (700 * MS, 10 * MS, "k"),  # nothing recorded
    ]
    p0 = _process(
        fast + slow,
        owners={"k": [0], "gc-key": [1]},
        steps=[(501 * MS, MS, MS, "AntiEntropy.round")],
        stalls=[(500 * MS, 8 * MS, MS), (600 * MS, 8 * MS, 8 * MS)],
    )
    p1 = _process([], gcs=[(402 * MS, 408 * MS, 2, 6 * MS)])
    result = trace.attribute([p0, p1], threshold_ms=1.0)
    assert result["slow"] == 4
    assert result["causes"] == {
        "gc": 1,
        "sync": 0,
        "loop busy": 1,
        "descheduled": 1,
        "none": 1,
    }
    assert result["touched"]["sync"] == 1
    assert result["in_sync_rounds"]["ops"] == 0  # one step is no round
    assert result["p99_local_remote_ms"]["remote"] == 10.0
    assert result["per_process"][1]["gen2"] == 1
    # The GC in process 1 is not held against process 0's own operations.
    assert result["per_process"][0]["gcs"] == 0
    assert "gc 1" in trace.describe("run", result)


def test_attribute_counts_only_the_window(trace: ModuleType) -> None:
    p0 = _process([(-5 * MS, 50 * MS, "k"), (5 * MS, MS, "k")])
    result = trace.attribute([p0], threshold_ms=2.0)
    assert result["ops"] == 1
    assert result["slow"] == 0


def _burn(ns: int) -> None:
    end = time.thread_time_ns() + ns
    while time.thread_time_ns() < end:
        pass


async def test_task_factory_times_sync_coroutines_only(
    trace: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    tracer = trace.Tracer()

    async def work() -> int:
        _burn(2 * trace.STEP_NS)
        await asyncio.sleep(0)
        _burn(2 * trace.STEP_NS)
        return 7

    # Pretend this test's coroutine lives in peer_ring/core/_sync/ (what the factory keys on).
    code = work.__code__.replace(co_filename="/x/peer_ring/core/_sync/_fake.py")
    monkeypatch.setattr(work, "__code__", code)

    async def other() -> int:
        _burn(2 * trace.STEP_NS)
        return 1

    tracer.install(loop)
    try:
        assert await asyncio.create_task(work(), name="sync") == 7
        assert await asyncio.create_task(other()) == 1
        gc.collect()
    finally:
        tracer.uninstall(loop)
    names = [step[3] for step in tracer.steps]
    # name#id: both steps of the one task, by the same instance.
    assert len(set(names)) == 1
    assert [name.split("#")[0] for name in names] == [code.co_qualname, code.co_qualname]
    assert all(cpu >= trace.STEP_NS for _, _, cpu, _ in tracer.steps)
    assert any(gen == 2 for _, _, gen, _ in tracer.gcs)
    tracer.ops.append((1, 2, "k"))
    out = tmp_path / "t.json"
    tracer.dump(out, {"k": [0]})
    assert json.loads(out.read_text())["ops"] == [[1, 2, "k"]]
