"""Self-tests of the suite's own tools (fast; the iptables test needs root).

A checker that misjudges, or a fault that outlives its test, would make every scenario's
figures meaningless, so the tools get tests of their own.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from e2e.api import Outcome, kv_url, parse_metrics
from e2e.checker import ClusterView, judge
from e2e.drivers.netfault import IptablesFaults, Isolation
from e2e.report import ScenarioReport, load_results, summary_markdown
from e2e.settings import DRIVER
from e2e.workload import KeyHistory, make_value, parse_value


def history(acked: int, **attempts: Outcome) -> KeyHistory:
    """Writer 3's key; ``s2="ok"`` means write seq 2 got that outcome."""
    return KeyHistory(3, {int(k[1:]): v for k, v in attempts.items()}, acked, 1)


def test_values_name_their_write() -> None:
    value = make_value(3, 42, 100)
    assert len(value) == 100
    assert parse_value(value) == (3, 42)
    assert parse_value(b"garbage") is None
    assert parse_value(make_value(1, 7, 2)) == (1, 7)  # shorter than the header: no padding


@pytest.mark.parametrize(
    ("status", "body", "verdict"),
    [
        (200, make_value(3, 5, 20), "ok"),  # the acknowledged write
        (200, make_value(3, 6, 20), "ok"),  # a newer one (failed or not)
        (200, make_value(3, 9, 20), "ok"),  # newer than the snapshot knows: newer
        (200, make_value(3, 4, 20), "late_unanswered"),  # older, never answered
        (200, make_value(3, 3, 20), "lost"),  # older, and acknowledged
        (200, make_value(3, 2, 20), "lost"),  # older, answered with an error
        (200, make_value(3, 1, 20), "lost"),  # never written
        (200, make_value(4, 5, 20), "lost"),  # another writer's value
        (404, b"", "lost"),
    ],
)
def test_judge(status: int, body: bytes, verdict: str) -> None:
    h = history(5, s2="answered", s3="ok", s4="no_answer", s5="ok", s6="answered")
    assert judge(h, status, body)[0] == verdict


def test_cluster_view_agreement_and_pending() -> None:
    view = ClusterView(
        documents={
            "n1": {"members": ["a", "b"], "handoff": {"partitions": {"pending": 2}}},
            "n2": {"members": ["b", "a"], "handoff": {"pending": 1}},
        }
    )
    assert view.agreed_members() == frozenset({"a", "b"})
    assert view.pending_transfers() == 3
    view.documents["n2"]["members"] = ["a"]
    assert view.agreed_members() is None
    assert ClusterView(documents={"n1": {"handoff": None}}).pending_transfers() is None


def test_kv_url_and_metrics() -> None:
    assert kv_url("http://h:1", "a/b c", quorum=2, ttl=None) == "http://h:1/kv/a%2Fb%20c?quorum=2"
    text = '# HELP x\npeer_ring_kv_keys 12.0\nreq_total{op="get",status="200"} 3\n'
    assert parse_metrics(text) == {
        "peer_ring_kv_keys": 12.0,
        'req_total{op="get",status="200"}': 3.0,
    }


def test_report_files(tmp_path: Path) -> None:
    report = ScenarioReport("s0_demo", "a demo")
    report.add(acknowledged_writes=10, lost=0, converge_seconds=1.234, replicas_ok_ratio=1.0)
    report.add(headline="all good")
    report.passed = True
    report.write(tmp_path)
    assert [r["scenario"] for r in load_results(tmp_path)] == ["s0_demo"]
    table = summary_markdown(tmp_path)
    assert "| s0_demo | pass | 10 | 0 | — | 1.23 | 100.0% | all good |" in table


def test_isolation_rules() -> None:
    rules = Isolation("127.9.9.3", 7101, 40003).rules()
    assert ["-m", "owner", "--gid-owner", "40003", "-p", "tcp", "--dport", "7101"] in rules
    assert ["-d", "127.9.9.3", "-p", "tcp", "--dport", "7101"] in rules
    assert ["-s", "127.9.9.3", "-p", "tcp", "--sport", "7101"] in rules


async def _connects(host: str, port: int, gid: int | None) -> bool:
    """Whether a child process running with group ``gid`` can connect to host:port."""
    code = (
        "import socket,sys\n"
        f"try: socket.create_connection(({host!r}, {port}), timeout=1.0)\n"
        "except OSError: sys.exit(1)\n"
    )
    kwargs: dict[str, Any] = {} if gid is None else {"group": gid, "extra_groups": []}
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", code, **kwargs)
    return await asyncio.wait_for(process.wait(), 10.0) == 0


async def test_partition_rules_cut_and_heal_and_leave_nothing(require_component: Any) -> None:
    """A node cut off cannot reach a peer port nor be reached on its own; healing restores
    both; closing removes the chain."""
    if DRIVER != "local":
        pytest.skip(f"iptables partitions are the local driver's tool (driver: {DRIVER})")
    binary, why = await IptablesFaults.probe()
    require_component("iptables (as root)", binary is not None, why)
    assert binary is not None
    # Two "nodes": listeners on 127.77.0.1 and 127.77.0.2, one shared port.
    first = socket.socket()
    first.bind(("127.77.0.1", 0))
    port = first.getsockname()[1]
    second = socket.socket()
    second.bind(("127.77.0.2", port))
    for s in (first, second):
        s.listen()
    faults = IptablesFaults(binary)
    try:
        await faults.open()
        victim_gid = 40999
        await faults.isolate("n1", Isolation("127.77.0.1", port, victim_gid))
        assert not await _connects("127.77.0.2", port, victim_gid)  # it cannot reach out
        assert not await _connects("127.77.0.1", port, None)  # nobody reaches it
        assert await _connects("127.77.0.2", port, None)  # the others still talk
        await faults.heal("n1")
        assert await _connects("127.77.0.2", port, victim_gid)
        assert await _connects("127.77.0.1", port, None)
    finally:
        await faults.close()
        first.close()
        second.close()
    process = await asyncio.create_subprocess_exec(
        binary, "-w", "-S", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    out, _ = await process.communicate()
    assert faults.chain.encode() not in out
