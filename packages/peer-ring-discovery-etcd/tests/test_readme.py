"""The README's example runs as written against a real etcd."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from peer_ring.core.testing import free_port

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(etcd_server) -> None:
    text = README.read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", text, re.DOTALL)
    assert code is not None
    port = free_port("127.0.0.1", "127.0.0.2", "127.0.0.3")
    env = {**os.environ, "ETCD_ENDPOINTS": etcd_server.endpoint, "PEER_PORT": str(port)}
    done = subprocess.run(
        [sys.executable, "-c", code.group(1)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    expected = sorted(f"127.0.0.{i}:{port}" for i in (1, 2, 3))
    assert done.stdout.strip() == f"{expected} False"
