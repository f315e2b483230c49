"""The plain install embeds KVStore without aiohttp and prometheus-client (the [serve] extra);
the command says which extra it needs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

PACKAGE = Path(__file__).parents[1]

# Makes `import aiohttp` / `import prometheus_client` fail as if they were not installed.
BLOCK = textwrap.dedent(
    """
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("aiohttp", "prometheus_client"):
                raise ImportError(f"No module named {name!r} (blocked by the test)")
            return None
    sys.meta_path.insert(0, Block())
    """
)


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCK + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_dependencies_leave_the_server_stack_to_extras() -> None:
    meta = tomllib.loads((PACKAGE / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith(("aiohttp", "prometheus")) for d in meta["dependencies"])
    assert {"serve", "k8s"} <= set(meta["optional-dependencies"])


def test_an_embedded_store_works_without_the_serve_extra() -> None:
    done = run(
        """
        import asyncio
        from peer_ring.core import PeerRingConfig
        from peer_ring.core.testing import FakeClock, FixedDiscovery, MemoryNetwork
        from peer_ring.kv import KVStore

        async def main():
            clock = FakeClock()
            net = MemoryNetwork(clock)
            a = "127.0.0.1:7601"
            kv = KVStore(FixedDiscovery(a, [a]), replication=1,
                         config=PeerRingConfig(partitions=8), transport=net.transport(a),
                         clock=clock)
            async with kv:
                await kv.wait_ready()
                await kv.set("k", [1, "x"])
                assert await kv.get("k") == [1, "x"]
                assert await kv.incr("n") == 1
                assert kv.cluster_status()["members"] == [a]
            assert "aiohttp" not in sys.modules and "prometheus_client" not in sys.modules
            print("embedded ok")

        asyncio.run(main())
        """
    )
    assert done.returncode == 0, done.stderr
    assert "embedded ok" in done.stdout


def test_the_command_names_the_extra() -> None:
    done = run("import runpy; runpy.run_module('peer_ring.kv.cli', run_name='__main__')")
    assert done.returncode == 1
    assert "peer-ring-kv-store[serve]" in done.stderr
