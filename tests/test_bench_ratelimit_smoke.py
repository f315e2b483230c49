"""``tools/bench ratelimit --smoke`` runs every part and writes its results document.

Never a timing assertion: only that the local, cluster and ``limits`` + Redis parts each
made decisions, and that the JSON has the fields the rate limiter's README relies on.
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
def test_bench_ratelimit_smoke(tmp_path: Path, require_component: Callable[..., None]) -> None:
    have_redis = shutil.which("redis-server") is not None
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        require_component(
            "redis-server", have_redis, "install it with `apt-get install -y redis-server`"
        )
    out = tmp_path / "ratelimit.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "ratelimit", "--smoke", "--rates", "100", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = json.loads(out.read_text())["rows"]
    systems = [r["system"] for r in rows]
    assert systems[0].startswith("peer-ring local") and systems[1].startswith("peer-ring decide")
    cluster = [r for r in rows if r["system"].startswith("peer-ring 3 nodes")]
    open_loop = [r for r in cluster if "open loop" in r["system"]]
    cluster = [r for r in cluster if r not in open_loop]
    assert len(cluster) == 4 and any("global mode" in r["system"] for r in cluster)
    # --rates: an open loop at replication 2 and 1, and the bare round trip (the floor).
    assert [" R2 " in r["system"] for r in open_loop] == [True, False]
    floor = [r for r in rows if r["system"].startswith("bare asyncio TCP round trip")]
    assert len(floor) == 1
    for row in [*open_loop, *floor]:
        assert row["decisions_per_s"] > 0 and row["errors"] == 0, row
    limits_rows = [r for r in rows if r["system"].startswith("limits + Redis")]
    assert len(limits_rows) == (2 if have_redis else 1)
    for row in [rows[0], *cluster, *(limits_rows if have_redis else [])]:
        assert row["decisions_per_s"] > 0, row
        assert {"p50_ms", "p99_ms", "errors", "cpu_us_per_decision", "algorithm"} <= set(row)


@pytest.mark.slow
def test_bench_ratelimit_trace_smoke(tmp_path: Path) -> None:
    """``--trace``: the traced open loops (R2 and R1) and the floor, each with its stages."""
    out = tmp_path / "trace.json"
    args = ["ratelimit", "--smoke", "--trace", "--rates", "60", "--json", str(out)]
    proc = subprocess.run(
        [sys.executable, str(BENCH), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = json.loads(out.read_text())["rows"]
    traced = [r for r in rows if "traced" in r["system"]]
    assert [" R2 " in r["system"] for r in traced] == [True, False]
    for row in traced:
        paths = {k: v for k, v in row["trace"].items() if k in ("1rtt", "2rtt", "relayed")}
        assert paths, row
        for stages in paths.values():
            assert stages["end-to-end"]["n"] > 0
            assert any(name.startswith("batch_out->") for name in stages)
        assert {"stalls_over_2ms", "max_stall_ms", "digest_partition_ms"} <= set(
            row["trace"]["loop"]
        )
    # The replicated paths exist only at R2: the owner's replication stages were seen there
    # (hits forwarded by a node that is not the key's other replica are relayed by default:
    # the replica's decision reaches the forwarder, relay_in).
    r2 = traced[0]["trace"]
    assert any("repl_out->replica_in" in s for p in ("2rtt", "relayed") for s in r2.get(p, {}))
    assert any(s.endswith("->relay_in") for s in r2.get("relayed", {})), r2
    assert "relayed" not in traced[1]["trace"]
    assert [r for r in rows if r["system"].startswith("bare asyncio TCP round trip")]
