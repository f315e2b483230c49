"""``tools/bench --smoke`` starts, finishes and writes a valid results document.

Never a timing assertion (speed is measured by benchmarks, never asserted in tests):
only that every part of the benchmark ran -- the peer-ring cluster, the local-get
micro-benchmark and the memory test -- and that the JSON has the fields docs/benchmarks.md
and later tooling rely on. The Redis baseline has its own test, which skips loudly without
``redis-server`` (and fails in CI) instead of dropping its assertions silently.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
REDIS_HOW = "install it with `apt-get install -y redis-server` (.ci/run does)"
BENCH = REPO / "tools" / "bench"

RUN_FIELDS = {
    "system",
    "label",
    "processes",
    "concurrency",
    "ops",
    "ops_per_s",
    "p50_ms",
    "p99_ms",
    "p999_ms",
    "errors",
    "error_total",
    "cpu_us_per_op",
    "peak_rss_mb",
    "per_process",
}


HAVE_REDIS = shutil.which("redis-server") is not None


@pytest.fixture(scope="module")
def bench_doc(
    tmp_path_factory: pytest.TempPathFactory, require_component: Callable[..., None]
) -> dict[str, Any]:
    """One ``tools/bench --smoke`` run for the module (it skips its Redis part by itself
    when ``redis-server`` is missing, except in CI, where it fails like this fixture)."""
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        require_component("redis-server", HAVE_REDIS, REDIS_HOW)
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


@pytest.mark.slow
def test_bench_smoke_compares_with_redis(
    bench_doc: dict[str, Any], require_component: Callable[..., None]
) -> None:
    require_component("redis-server", HAVE_REDIS, REDIS_HOW)
    assert "redis" in {run["system"] for run in bench_doc["runs"]}
    comparisons = bench_doc["comparisons"]
    assert comparisons and all(c["ratio"] > 0 for c in comparisons)


@pytest.mark.slow
def test_bench_smoke_writes_valid_json(bench_doc: dict[str, Any]) -> None:
    doc = bench_doc
    runs = doc["runs"]
    systems = {run["system"] for run in runs}
    assert "peer-ring" in systems
    for run in runs:
        assert run.keys() >= RUN_FIELDS, RUN_FIELDS - run.keys()
        assert run["ops"] > 0
        assert run["ops_per_s"] > 0
        assert 0 < run["p50_ms"] <= run["p99_ms"] <= run["p999_ms"]
        assert run["cpu_us_per_op"] > 0
        assert len(run["per_process"]) == run["processes"]
        assert all(mb > 0 for mb in run["peak_rss_mb"])
    micro = doc["micro"]
    assert [entry["replication"] for entry in micro["local_get"]] == [1, 3]
    for entry in micro["local_get"]:
        assert entry["owned_keys"] > 0
        assert entry["await_per_call_us"]["median"] > 0
        assert entry["timeit_us"]["best"] > 0

    memory = doc["memory"]
    assert memory["stored"] == memory["keys"] > 0
    assert memory["readback_ok"]
    assert memory["ratio"] > 0

    assert doc["targets"], "the targets section is missing"
    assert {"met", "measured", "target", "name"} <= doc["targets"][0].keys()
    assert doc["machine"]["cpus"] >= 1
