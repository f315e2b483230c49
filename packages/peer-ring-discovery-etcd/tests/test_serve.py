"""``peer-ring-kv serve --discovery etcd``: the real CLI, with good and bad settings."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
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
        "--listen", "127.0.0.1:1", "--discovery", "etcd",
        "--discovery-option", "endpoint=127.0.0.1:2379",
    )  # fmt: skip
    assert done.returncode == 2
    assert "unknown option(s) endpoint; valid options: endpoints, prefix" in done.stderr


def test_bad_prefix_is_a_usage_error() -> None:
    done = serve(
        "--listen", "127.0.0.1:1", "--discovery", "etcd", "--discovery-option", "prefix=/",
    )  # fmt: skip
    assert done.returncode == 2
    assert "whole keyspace" in done.stderr


def test_unreachable_etcd_fails_serve_fast() -> None:
    listen, http, etcd = free_port(), free_port(), free_port()
    started = time.monotonic()
    done = serve(
        "--listen", f"127.0.0.1:{listen}", "--http", f"127.0.0.1:{http}",
        "--discovery", "etcd", "--discovery-option", f"endpoints=127.0.0.1:{etcd}",
        "--discovery-option", "startup-timeout=1",
    )  # fmt: skip
    assert done.returncode != 0
    assert f"no answer from etcd at 127.0.0.1:{etcd}" in done.stderr
    assert time.monotonic() - started < 30.0


async def test_serve_registers_in_etcd(env, tmp_path) -> None:
    listen, http = free_port(), free_port()
    log = (tmp_path / "serve.log").open("w")
    args = [
        *SERVE, "--listen", f"127.0.0.1:{listen}", "--http", f"127.0.0.1:{http}",
        "--discovery", "etcd", "--discovery-option", f"endpoints={env.server.endpoint}",
        "--discovery-option", f"prefix={env.prefix}", "--discovery-option", "meta.zone=z1",
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(*args, stdout=log, stderr=subprocess.STDOUT)
    try:

        def cluster() -> list[str] | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/cluster", timeout=2) as r:
                    members: list[str] = json.load(r).get("members")
                    return members
            except OSError:
                return None  # not listening yet

        members = None
        deadline = time.monotonic() + 60.0
        while members is None and time.monotonic() < deadline and proc.returncode is None:
            members = await asyncio.to_thread(cluster)
            if members is None:
                await asyncio.sleep(0.1)  # a process start, polled
        assert members == [f"127.0.0.1:{listen}"], (tmp_path / "serve.log").read_text()[-2000:]
        listing = await env.admin.list_prefix(env.prefix.encode())
        (kv,) = listing.kvs
        assert kv.key.decode() == f"{env.prefix}127.0.0.1:{listen}"
        assert json.loads(kv.value)["metadata"] == {"zone": "z1"}
        assert kv.lease != 0
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
        log.close()
    # SIGTERM: a graceful leave, which stops discovery and revokes the lease.
    left = (await env.admin.list_prefix(env.prefix.encode())).kvs
    assert left == (), (tmp_path / "serve.log").read_text()[-3000:]
