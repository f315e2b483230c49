"""The sidecar image (the repository's Dockerfile) built and run as a 3-node cluster.

Three ``peer-ring-kv serve`` containers on host networking and loopback ports (no bridge:
tools/docker-test-env configures dockerd without one): all become ready, take writes at
quorum 2, keep serving them after ``docker kill`` of one, and a SIGTERM to another's PID 1
makes that node hand its partitions off before it exits 0 -- the surviving node then serves
every key alone. The image runs as a non-root user. Containers are removed at the end, also
when a step fails.

Needs a Docker engine and the base image ``python:3.11-slim`` (official, or the stand-in of
tools/docker-test-env); skips without an engine on a laptop, fails in CI.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from peer_ring.core.testing import free_port
from testing_components._docker import container_name

REPO = Path(__file__).resolve().parents[1]
IMAGE = "peer-ring-kv:smoke"
KEYS = [f"smoke:{i}" for i in range(24)]
READY_WITHIN = 90.0


def docker(*args: str, timeout: float = 60, check: bool = True) -> str:
    """Run the docker CLI; its stdout. Fails the test with stderr when ``check`` and it fails."""
    proc = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        pytest.fail(f"docker {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout


@pytest.fixture(scope="module")
def image(docker_engine: str) -> dict[str, Any]:
    """Build the Dockerfile (host network: no bridge here); the tag, build time, size."""
    started = time.monotonic()
    proc = subprocess.run(
        ["docker", "build", "--network", "host", "-t", IMAGE, str(REPO)],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        pytest.fail(f"docker build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    size = int(docker("image", "inspect", "-f", "{{.Size}}", IMAGE).strip())
    return {"tag": IMAGE, "build_seconds": seconds, "size_bytes": size}


class Node:
    """One ``serve`` container on host networking."""

    def __init__(self, index: int, peer_port: int, http_port: int) -> None:
        # The container layer's naming: swept by the next run if this one is SIGKILLed.
        self.name = container_name(f"smoke{index}")
        self.peer = f"127.0.0.1:{peer_port}"
        self.http = f"http://127.0.0.1:{http_port}"

    def logs(self) -> str:
        proc = subprocess.run(
            ["docker", "logs", self.name], capture_output=True, text=True, timeout=30, check=False
        )
        return proc.stdout + proc.stderr

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(f"{self.http}{path}", data=body, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_WITHIN
        last = "no answer"
        for _ in range(int(READY_WITHIN / 0.2) + 1):
            try:
                status, _ = self.request("GET", "/readyz")
                if status == 200:
                    return
                last = f"HTTP {status}"
            except OSError as exc:
                last = str(exc)
            state = docker("inspect", "-f", "{{.State.Status}}", self.name, check=False).strip()
            if state != "running" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        tail = "\n".join(self.logs().splitlines()[-30:])
        pytest.fail(f"{self.name} not ready ({last}, container {state}); log:\n{tail}")


@pytest.fixture
def nodes(image: dict[str, Any]) -> Iterator[list[Node]]:
    """Three nodes (not started); every container is removed afterwards, whatever happened."""
    ports = [(free_port(), free_port()) for _ in range(3)]
    cluster = [Node(i + 1, p, h) for i, (p, h) in enumerate(ports)]
    try:
        yield cluster
    finally:
        docker("rm", "-f", *(n.name for n in cluster), check=False)


def test_three_sidecars_survive_a_kill_and_a_graceful_leave(
    image: dict[str, Any], nodes: list[Node], capsys: pytest.CaptureFixture[str]
) -> None:
    peers = ",".join(n.peer for n in nodes)
    for node in nodes:
        docker(
            "run", "-d", "--name", node.name, "--network", "host", image["tag"], "serve",
            "--listen", node.peer, "--http", node.http.removeprefix("http://"),
            "--peers", peers, "--replication", "2",
            # The killed node stays in the ring (suspected, never taken out), however slow
            # this machine is: the SIGTERMed node then surely has partitions to hand over.
            "--down-after", "off",
        )  # fmt: skip
    for node in nodes:
        node.wait_ready()
    first, second, third = nodes

    # Non-root, and the server itself is PID 1 (so `docker stop` signals reach it).
    assert docker("exec", third.name, "id", "-u").strip() == "10001"
    assert "peer-ring-kv" in docker("exec", third.name, "cat", "/proc/1/cmdline")

    for key in KEYS:
        status, body = first.request("PUT", f"/kv/{key}?quorum=2", key.encode())
        assert status == 204, (key, status, body)

    docker("kill", first.name)  # SIGKILL: no goodbye
    for key in KEYS:
        assert second.request("GET", f"/kv/{key}?quorum=1") == (200, key.encode()), key

    # SIGTERM to PID 1: a graceful leave hands the node's partitions to the nodes taking
    # them over (the third one; the first is dead) before it exits 0.
    docker("kill", "--signal", "TERM", second.name)
    exit_code = docker("wait", second.name, timeout=90).strip()
    log = second.logs()
    assert exit_code == "0", log[-3000:]
    assert "SIGTERM received" in log, log[-3000:]
    handed = re.search(r"leaving: handing (\d+) partition replica\(s\)", log)
    assert handed and int(handed.group(1)) > 0, log[-3000:]
    left = re.search(r"left the ring: LeaveReport\(acknowledged=\(([^)]*)\)", log)
    assert left and third.peer in left.group(1), log[-3000:]

    # The third node now serves every key alone: its own copies and the handed-off ones.
    for key in KEYS:
        assert third.request("GET", f"/kv/{key}?quorum=1") == (200, key.encode()), key

    with capsys.disabled():
        print(
            f"\nsidecar image {image['tag']}: {image['size_bytes'] / 1e6:.0f} MB, "
            f"built in {image['build_seconds']:.0f} s; partitions handed off on SIGTERM: "
            f"{handed.group(1)}"
        )


def test_every_discovery_ships_in_the_image(image: dict[str, Any]) -> None:
    # An unknown name is a usage error that lists every discovery the image can use.
    proc = subprocess.run(
        ["docker", "run", "--rm", "--network", "host", image["tag"], "serve",
         "--listen", "127.0.0.1:1", "--discovery", "no-such-discovery"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    listed = proc.stderr.split("installed:", 1)[-1]
    for name in ("static", "kubernetes", "etcd", "zookeeper", "gossip"):
        assert name in listed, proc.stderr


def test_the_embedded_application_image_builds_and_serves(docker_engine: str) -> None:
    """deploy/embedded/Dockerfile: the app process is the node (one replica, static peers)."""
    tag = "peer-ring-sessions:smoke"
    proc = subprocess.run(
        ["docker", "build", "--network", "host", "-f", "deploy/embedded/Dockerfile",
         "-t", tag, str(REPO)],
        capture_output=True, text=True, timeout=1200, check=False, cwd=REPO,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.fail(f"docker build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    peer, http = free_port(), free_port()
    name = container_name("embedded")
    try:
        docker(
            "run", "-d", "--name", name, "--network", "host",
            "-e", f"PEERS=127.0.0.1:{peer}", "-e", f"ME=127.0.0.1:{peer}",
            tag, "--port", str(http), "--host", "127.0.0.1",
        )  # fmt: skip
        base = f"http://127.0.0.1:{http}"
        deadline = time.monotonic() + READY_WITHIN
        status = 0
        while time.monotonic() < deadline and status != 200:
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=5) as r:
                    status = r.status
            except (OSError, urllib.error.HTTPError):
                time.sleep(0.3)
        logs = docker("logs", name, check=False)
        assert status == 200, f"not ready; log:\n{logs[-3000:]}"
        with urllib.request.urlopen(f"{base}/healthz", timeout=10) as r:
            health = json.loads(r.read())
        assert health == {"ready": True, "members": 1, "me": f"127.0.0.1:{peer}"}
        uid = docker("exec", name, "id", "-u").strip()
        assert uid == "10001"
    finally:
        docker("rm", "-f", name, check=False)
