"""``peer-ring-kv serve --discovery zookeeper``: the real CLI, with good and bad settings."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from peer_ring.core.testing import free_port

pytest.importorskip("peer_ring.kv", reason="needs peer-ring-kv-store (the serve command)")

SERVE = [sys.executable, "-m", "peer_ring.kv.cli", "serve"]


def serve(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SERVE, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_unknown_option_is_a_usage_error() -> None:
    done = serve(
        "--listen", "127.0.0.1:1", "--discovery", "zookeeper",
        "--discovery-option", "hosts=127.0.0.1:2181", "--discovery-option", "prefix=/x",
    )  # fmt: skip
    assert done.returncode == 2
    assert "unknown option prefix; valid: hosts, path" in done.stderr


def test_unreachable_zookeeper_fails_serve_fast() -> None:
    listen, http, zk = free_port(), free_port(), free_port()
    started = time.monotonic()
    done = serve(
        "--listen", f"127.0.0.1:{listen}", "--http", f"127.0.0.1:{http}",
        "--discovery", "zookeeper", "--discovery-option", f"hosts=127.0.0.1:{zk}",
        "--discovery-option", "startup-timeout=1",
    )  # fmt: skip
    assert done.returncode != 0
    assert f"ZooKeeper at 127.0.0.1:{zk} is unreachable" in done.stderr
    assert time.monotonic() - started < 30.0


def test_serve_registers_in_zookeeper(zk_server, zk_path, tmp_path) -> None:
    listen, http = free_port(), free_port()
    log = (tmp_path / "serve.log").open("w")
    args = [
        *SERVE, "--listen", f"127.0.0.1:{listen}", "--http", f"127.0.0.1:{http}",
        "--discovery", "zookeeper", "--discovery-option", f"hosts={zk_server.hosts}",
        "--discovery-option", f"path={zk_path}", "--discovery-option", "meta.zone=z1",
    ]  # fmt: skip
    proc = subprocess.Popen(
        args,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60.0
        members = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/cluster", timeout=2) as r:
                    members = json.load(r).get("members")
                    break
            except OSError:
                time.sleep(0.1)  # not listening yet: a process start, polled
        assert members == [f"127.0.0.1:{listen}"], (tmp_path / "serve.log").read_text()[-2000:]
        from kazoo.client import KazooClient  # type: ignore[import-untyped]

        client = KazooClient(hosts=zk_server.hosts)
        client.start(timeout=30)
        try:
            # /cluster lists the node itself as soon as its HTTP API is up, which can be
            # before its registration reached ZooKeeper: wait for the znode on a watch.
            znode = f"{zk_path}/127.0.0.1:{listen}"
            created = threading.Event()
            if client.exists(znode, watch=lambda _event: created.set()) is None:
                assert created.wait(30), f"{znode} not created within 30 s"
            data, stat = client.get(znode)
            assert json.loads(data)["metadata"] == {"zone": "z1"}
            assert stat.ephemeralOwner != 0
        finally:
            client.stop()
            client.close()
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()
