"""The README's example runs as written (three nodes with real gRPC and gossip)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from peer_ring.core.testing import free_port

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs() -> None:
    code = re.search(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)
    assert code is not None
    hosts = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
    peer, gossip = free_port(*hosts), free_port(*hosts)
    env = {**os.environ, "PEER_PORT": str(peer), "GOSSIP_PORT": str(gossip)}
    done = subprocess.run(
        [sys.executable, "-c", code.group(1)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str([f"{h}:{peer}" for h in hosts])
