"""The README's example runs against three local nodes (real gRPC on 127.0.0.1/.2/.3)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from peer_ring.core.testing import free_port

EXAMPLE = Path(__file__).parents[1] / "examples" / "quickstart.py"


def test_quickstart_example_all_in_one_process() -> None:
    port = free_port("127.0.0.1", "127.0.0.2", "127.0.0.3")
    out = subprocess.run(
        [sys.executable, str(EXAMPLE), "--all", str(port)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "billing got b'order 42: 2 books' from user:7" in out.stdout
    assert "duplicate=False" in out.stdout
    assert out.stdout.strip().endswith("ok")
