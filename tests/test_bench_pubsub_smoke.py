"""``tools/bench pubsub --smoke`` starts, finishes and writes a valid results document.

Never a timing assertion (speed is measured by benchmarks, not asserted in tests): only that
the pub-sub cluster and the Redis Streams baseline (when ``redis-server`` exists, required in
CI) ran both phases and that the JSON has the fields the README's figures come from.
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


@pytest.mark.slow
def test_bench_pubsub_smoke_writes_valid_json(
    tmp_path: Path, require_component: Callable[..., None]
) -> None:
    have_redis = shutil.which("redis-server") is not None
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        require_component(
            "redis-server",
            have_redis,
            "install it with `apt-get install -y redis-server` (.ci/run does)",
        )
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "pubsub", "--smoke", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    doc = json.loads(out.read_text())
    systems = [r["system"] for r in doc["results"]]
    assert any(s.startswith("peer-ring-pubsub") for s in systems)
    if have_redis:
        assert any(s.startswith("Redis Streams") for s in systems)
    for result in doc["results"]:
        for phase in ("throughput", "latency"):
            figures = result[phase]
            assert figures["publish_per_s"] > 0 and figures["e2e_per_s"] > 0
            assert figures["errors"] >= 0
            p = figures["e2e_ms"]
            assert 0 < p["p50_ms"] <= p["p99_ms"] <= p["p999_ms"]


@pytest.mark.slow
def test_bench_pubsub_in_process_counts_requests(tmp_path: Path) -> None:
    out = tmp_path / "inproc.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "pubsub",
            "--in-process",
            "400",
            "--nodes",
            "3",
            "--transport",
            "tcp",
            "--json",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    (result,) = json.loads(out.read_text())["results"]
    assert result["messages"] == 400 and result["cpu_us_per_msg"] > 0
    calls = result["calls_per_1000_msgs"]
    # Every message was replicated (appends). Group deltas (claims, acks) ride on the appends
    # as sections since round 7, so a separate "group" call need not appear.
    assert any(k.endswith(" append") for k in calls)
    assert result["requests_per_1000_msgs"] > 0
    # The transports counted what went between nodes: at least one request per replicated round.
    assert result["wire_requests_per_1000_msgs"] > 0
