"""Repository-wide pytest configuration, loaded for every test under this root.

It provides one fixture, ``require_component``, for tests that need a real external component
(a Redis server, a Kubernetes API server, etcd, iptables, ...). DESIGN.md, "Test tiers": such
tests *skip* with a clear reason on a laptop that lacks the component, but *fail* in CI, where
``.ci/run`` installs or builds every component (a green CI must never hide a skipped tier).

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
