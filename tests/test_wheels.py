"""tools/check-wheels: every package's wheel keeps the PEP 420 `peer_ring` namespace intact."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECK = REPO / "tools" / "check-wheels"
DISTS = {
    "peer-ring-core": "peer_ring/core",
    "peer-ring-discovery-static": "peer_ring/discovery/static",
    "peer-ring-kv-store": "peer_ring/kv",
    "peer-ring-discovery-k8s": "peer_ring/discovery/k8s",
    "peer-ring-discovery-zookeeper": "peer_ring/discovery/zookeeper",
    "peer-ring-pubsub": "peer_ring/pubsub",
    "peer-ring-discovery-etcd": "peer_ring/discovery/etcd",
    "peer-ring-discovery-gossip": "peer_ring/discovery/gossip",
    "peer-ring-rate-limiter": "peer_ring/ratelimit",
}


def check_wheels(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHECK), *args],
        text=True,
        capture_output=True,
        timeout=300,
        check=False,
    )


def test_every_real_wheel_passes(tmp_path: Path) -> None:
    proc = check_wheels("--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheels = {p.name.split("-")[0]: p for p in tmp_path.glob("*.whl")}
    assert set(wheels) == {d.replace("-", "_") for d in DISTS}
    # Belt and braces: look inside the wheels here too, independently of the script.
    for dist, leaf in DISTS.items():
        with zipfile.ZipFile(wheels[dist.replace("-", "_")]) as wheel:
            names = set(wheel.namelist())
        assert "peer_ring/__init__.py" not in names, dist
        assert "peer_ring/discovery/__init__.py" not in names, dist
        assert f"{leaf}/py.typed" in names, dist
        assert f"{leaf}/__about__.py" in names, dist


def make_package(root: Path, *, namespace_init: bool, py_typed: bool) -> None:
    """A one-package monorepo whose single wheel is built from the real static pyproject."""
    dist = "peer-ring-discovery-static"
    pkg = root / "packages" / dist
    leaf = pkg / "src" / "peer_ring" / "discovery" / "static"
    leaf.mkdir(parents=True)
    shutil.copy2(REPO / "packages" / dist / "pyproject.toml", pkg / "pyproject.toml")
    (pkg / "README.md").write_text("# test\n", encoding="utf-8")
    (leaf / "__about__.py").write_text('__version__ = "0.1.0"\n', encoding="utf-8")
    (leaf / "__init__.py").write_text("", encoding="utf-8")
    if py_typed:
        (leaf / "py.typed").write_text("", encoding="utf-8")
    if namespace_init:
        (leaf.parent / "__init__.py").write_text("", encoding="utf-8")


def test_a_namespace_init_fails_the_check(tmp_path: Path) -> None:
    make_package(tmp_path, namespace_init=True, py_typed=False)
    proc = check_wheels("--root", str(tmp_path))
    assert proc.returncode == 1
    assert "FAIL peer-ring-discovery-static" in proc.stdout
    assert "ships peer_ring/discovery/__init__.py" in proc.stdout
    assert "has no peer_ring/discovery/static/py.typed" in proc.stdout
    assert "0 wheel(s) ok, 1 failed" in proc.stdout


def test_a_clean_package_passes_the_check(tmp_path: Path) -> None:
    make_package(tmp_path, namespace_init=False, py_typed=True)
    proc = check_wheels("--root", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok   peer-ring-discovery-static" in proc.stdout


def test_unknown_distribution_is_an_error() -> None:
    proc = check_wheels("peer-ring-nope")
    assert proc.returncode == 1
    assert "unknown distribution(s): peer-ring-nope" in proc.stderr
