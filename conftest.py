"""Repository-wide pytest configuration, loaded for every test under this root.

It provides one fixture, ``require_component``, for tests that need a real external component
(a Redis server, a Kubernetes API server, etcd, iptables, ...). As CONTRIBUTING.md says
("Tests that need a real component"), such tests *skip* with a clear reason on a laptop
that lacks the component, but *fail* in CI, where ``.ci/run`` installs or builds every
component (a green CI must never hide a skipped tier).

Usage, from any package's tests (no import needed; pytest injects the fixture)::

    def test_against_real_redis(require_component):
        require_component(
            "redis-server",
            shutil.which("redis-server") is not None,
            "install it with `apt-get install redis-server` (.ci/run does)",
        )
        ...

    @pytest.fixture(scope="session")
    def kube_apiserver(require_component):
        binary = BIN / "kube-apiserver"
        require_component("kube-apiserver", binary.exists(), "run tools/k8s-test-env")
        ...

The fixture is session-scoped so fixtures of any scope can use it. "In CI" means the
environment variable ``CI`` is set to a non-empty value other than ``0``/``false`` (GitHub
Actions and ``.ci/run`` set ``CI=true``).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Protocol

import pytest

# --import-mode=importlib does not put the root on sys.path: do it for testing_components.
_ROOT = str(Path(__file__).resolve().parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

# `pytester` lets the repository-level tests (tests/) run pytest on generated test trees.
# `testing_components.plugin`: real test components (Redis...) from a binary or a container,
# for every package's tests (fixtures `redis_server`, `docker_engine`; see its docstring).
pytest_plugins = ["pytester", "testing_components.plugin"]

# Hypothesis fails an example slower than its default deadline (200 ms): a speed assertion,
# which tests never make (the machines are small and shared). Seen on a loaded machine: an
# example of test_sync_delta_wire took 320 ms once and 9 ms when replayed (FlakyFailure).
# Every property test of every package runs with no deadline; a test's own @settings may
# still set one.
try:
    from hypothesis import settings as _hypothesis_settings
except ImportError:  # pragma: no cover - hypothesis is in requirements-dev.txt
    pass
else:
    _hypothesis_settings.register_profile("peer-ring", deadline=None)
    _hypothesis_settings.load_profile("peer-ring")


class RequireComponent(Protocol):
    """Signature of the callable returned by the ``require_component`` fixture."""

    def __call__(self, name: str, available: bool, reason: str = "") -> None:
        """Skip (or, in CI, fail) the current test unless ``available`` is true.

        Args:
            name: The component, as a person would install it (``"redis-server"``).
            available: Whether the component was found.
            reason: How to get it, appended to the message.
        """


def running_in_ci() -> bool:
    """Whether the tests run in CI, where a missing component is an error, not a skip."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_component(name: str, available: bool, reason: str = "") -> None:
    """Skip the test when a required component is missing, or fail it when running in CI.

    Args:
        name: The component, as a person would install it (``"redis-server"``).
        available: Whether the component was found.
        reason: How to get it; appended to the skip/fail message.
    """
    if available:
        return
    message = f"required component {name!r} is not available"
    if reason:
        message = f"{message}: {reason}"
    if running_in_ci():
        pytest.fail(f"{message} (CI is set, so a missing component is a failure, not a skip)")
    pytest.skip(message)


@pytest.fixture(scope="session", name="require_component")
def require_component_fixture() -> RequireComponent:
    """The :func:`require_component` function, for tests and fixtures in any package."""
    return require_component


# -- test tiers ------------------------------------------------------------------------------
#
# Every collected test gets exactly one tier marker (README, "Tests"):
#
# * ``e2e``: the tests under ``e2e/`` (real node processes under faults);
# * ``cluster``: tests that build more than pure logic: nodes (in memory or over gRPC),
#   sockets, subprocesses, real external components. A test is ``cluster`` when it is
#   marked so explicitly, is marked ``slow`` or ``k8s``, uses ``require_component``, or its
#   module's source, or the source of a file defining a fixture it uses (a conftest.py),
#   builds one of the things in ``_CLUSTER_SIGNS``;
# * ``unit``: everything else (pure, in-process, no network; fast): ``pytest -m unit``.
#
# An explicit ``unit`` or ``cluster`` marker on a test or module overrides the rule.

_THIS = Path(__file__).resolve()
_REPO = _THIS.parent
_E2E_DIR = _REPO / "e2e"
_CLUSTER_SIGNS = re.compile(
    r"\b(?:PeerRing|KVStore|MemoryNetwork|GrpcTransport|LocalCluster)\("
    r"|\bgrpc\.aio\b|\bsubprocess\b|\bfree_port\(|\bstart_server\(|\bopen_connection\("
    r"|\bsocket\.socket\(|\bpytester\b|\bcreate_datagram_endpoint\("
)
_module_tiers: dict[Path, str] = {}


def _module_tier(path: Path) -> str:
    tier = _module_tiers.get(path)
    if tier is None:
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            source = ""
        tier = "cluster" if _CLUSTER_SIGNS.search(source) else "unit"
        _module_tiers[path] = tier
    return tier


def tier_of(item: pytest.Item) -> str:
    """The tier of a collected test (see the rule above)."""
    path = Path(str(item.path)).resolve()
    if _E2E_DIR in path.parents:
        return "e2e"
    for tier in ("cluster", "unit"):
        if item.get_closest_marker(tier) is not None:
            return tier
    if any(item.get_closest_marker(m) is not None for m in ("slow", "k8s")):
        return "cluster"
    if "require_component" in getattr(item, "fixturenames", ()):
        return "cluster"
    if _module_tier(path) == "cluster":
        return "cluster"
    # Clusters are often built by fixtures of a conftest.py: judge the files that define
    # the fixtures this test uses, too (a conftest that builds nodes makes its users
    # cluster tests, conservatively).
    info = getattr(item, "_fixtureinfo", None)
    for defs in getattr(info, "name2fixturedefs", {}).values():
        for fixturedef in defs:
            source = getattr(getattr(fixturedef.func, "__code__", None), "co_filename", "")
            if not source.endswith(".py"):
                continue
            file = Path(source).resolve()
            if file == _THIS or _REPO not in file.parents or "site-packages" in file.parts:
                continue  # this file names the signs; plugins are not the project's
            if _module_tier(file) == "cluster":
                return "cluster"
    return "unit"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give every test its tier marker (``-m unit`` / ``-m cluster`` / ``-m e2e``)."""
    for item in items:
        tier = tier_of(item)
        if item.get_closest_marker(tier) is None:
            item.add_marker(getattr(pytest.mark, tier))


def pytest_addoption(parser: pytest.Parser) -> None:
    # The deterministic simulator (packages/peer-ring-kv-store/tests/test_sim.py): replay
    # seeds, e.g. one that tools/sim or CI reported (the same run whatever PYTHONHASHSEED
    # is): pytest ... --sim-seed=N
    parser.addoption(
        "--sim-seed",
        type=int,
        action="append",
        default=[],
        help="run the KV simulator test with this seed (repeatable; default: seeds 0-4)",
    )
