"""The tutorial (docs/tutorial.md) as written: three uvicorn processes running
examples/sessions_app.py on real gRPC and HTTP; a session created on one replica is read on
the others, survives a kill -9 of the replica that created it, and is readable on that
replica again once it is restarted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from peer_ring.core.testing import free_port

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

EXAMPLES = Path(__file__).parents[1] / "examples"


def call(
    port: int, method: str, path: str, session: str | None = None
) -> tuple[int, dict[str, Any]]:
    headers = {"x-session": session} if session else {}
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class Replicas:
    def __init__(self, tmp: Path) -> None:
        self.peer_ports = [free_port() for _ in range(3)]
        self.http_ports = [free_port() for _ in range(3)]
        self.peers = ",".join(f"127.0.0.1:{p}" for p in self.peer_ports)
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * 3
        self.tmp = tmp

    def start(self, i: int) -> None:
        env = dict(os.environ, PEERS=self.peers, ME=f"127.0.0.1:{self.peer_ports[i]}")
        with (self.tmp / f"replica{i}.log").open("ab") as log:  # the child keeps its copy
            self.procs[i] = self._spawn(i, env, log)

    def _spawn(self, i: int, env: dict[str, str], log: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "sessions_app:app",
                "--app-dir",
                str(EXAMPLES),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.http_ports[i]),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def wait_serving(self, i: int, within: float = 60.0) -> None:
        # Polls an external process's HTTP port: there is no event to wait on.
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            proc = self.procs[i]
            assert proc is not None and proc.poll() is None, self.log(i)
            try:
                status, body = call(self.http_ports[i], "GET", "/healthz")
                if status == 200 and body["ready"]:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"replica {i} not serving within {within}s\n{self.log(i)}")

    def kill9(self, i: int) -> None:
        proc = self.procs[i]
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            if proc is not None:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def log(self, i: int) -> str:
        path = self.tmp / f"replica{i}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[Replicas]:
    r = Replicas(tmp_path)
    try:
        yield r
    finally:
        r.stop_all()


def test_sessions_survive_a_kill_9_and_the_replica_recovers(replicas: Replicas) -> None:
    for i in range(3):
        replicas.start(i)
    for i in range(3):
        replicas.wait_serving(i)
    a, b, c = replicas.http_ports

    sessions = {}
    for n in range(10):
        status, body = call(a, "POST", f"/login?user=user{n}")
        assert status == 200, body
        sessions[body["session"]] = f"user{n}"
    for port in (b, c):
        for session, user in sessions.items():
            status, body = call(port, "GET", "/me", session)
            assert status == 200 and body["user"] == user, body
    assert call(b, "GET", "/me", "no-such-session")[0] == 401

    replicas.kill9(0)  # the replica that created every session
    for port in (b, c):
        for session, user in sessions.items():
            status, body = call(port, "GET", "/me", session)
            assert status == 200 and body["user"] == user, (port, body)
    # the two survivors still accept new sessions (2 of 3 replicas = the quorum)
    status, body = call(b, "POST", "/login?user=late")
    assert status == 200, body
    sessions[body["session"]] = "late"

    replicas.start(0)  # recovery: same address, empty memory
    replicas.wait_serving(0)
    for session, user in sessions.items():
        status, body = call(a, "GET", "/me", session)
        assert status == 200 and body["user"] == user, body
    session = next(iter(sessions))
    assert call(c, "POST", "/logout", session)[0] == 200
    assert call(a, "GET", "/me", session)[0] == 401
