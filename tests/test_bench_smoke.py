"""``tools/bench --smoke`` starts, finishes and writes a valid results document.

Never a timing assertion (DESIGN.md: speed is measured by benchmarks, not asserted in tests):
only that every part of the benchmark ran -- the peer-ring cluster, the Redis baseline when
``redis-server`` exists (required in CI), the local-get micro-benchmark and the memory test --
and that the JSON has the fields docs/benchmarks.md and later tooling rely on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
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


@pytest.mark.slow
def test_bench_smoke_writes_valid_json(
    tmp_path: Path, require_component: Callable[..., None]
) -> None:
    have_redis = shutil.which("redis-server") is not None
    in_ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    if in_ci:
        # In CI the Redis baseline is required (the fixture fails the test, as tools/bench
        # would); on a laptop, tools/bench --smoke skips the Redis part by itself.
        require_component(
            "redis-server",
            have_redis,
            "install it with `apt-get install -y redis-server` (.ci/run does)",
        )
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    doc = json.loads(out.read_text())

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
    if have_redis:
        assert "redis" in systems
        assert doc["comparisons"] and all(c["ratio"] > 0 for c in doc["comparisons"])

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
