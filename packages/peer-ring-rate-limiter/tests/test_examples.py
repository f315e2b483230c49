"""The README's quick start runs: three nodes on real gRPC in one process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from peer_ring.core.testing import free_port

EXAMPLE = Path(__file__).parents[1] / "examples" / "quickstart.py"


def test_quickstart_example() -> None:
    port = free_port("127.0.0.1", "127.0.0.2", "127.0.0.3")
    out = subprocess.run(
        [sys.executable, str(EXAMPLE), "--all", str(port)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0] == "allowed: [True, True, True, True, True, False, False]"
    assert lines[1].startswith("remaining=0 retry_after=6")
    assert 20 <= int(lines[2].removeprefix("burst admitted: ")) <= 22
    assert lines[3] == "after reset: 5"
    assert lines[-1] == "ok"
