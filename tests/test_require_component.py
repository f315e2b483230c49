"""The root conftest's ``require_component``: skip on a laptop, fail in CI."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT_CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"


@pytest.mark.parametrize("ci", ["", "0", "false"])
def test_missing_component_skips_outside_ci(
    require_component, monkeypatch: pytest.MonkeyPatch, ci: str
) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match=r"'redis-server'.*apt-get install"):
        require_component("redis-server", False, "apt-get install redis-server")


@pytest.mark.parametrize("ci", ["true", "1", "yes"])
def test_missing_component_fails_in_ci(
    require_component, monkeypatch: pytest.MonkeyPatch, ci: str
) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match=r"'kube-apiserver'.*tools/k8s-test-env"):
        require_component("kube-apiserver", False, "run tools/k8s-test-env")


def test_available_component_does_nothing(require_component, monkeypatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert require_component("git", True, "") is None


@pytest.mark.parametrize(("ci", "outcome"), [(None, "skipped"), ("true", "failed")])
def test_reported_outcome_in_a_package_test_dir(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str | None, outcome: str
) -> None:
    """A package's tests/ folder (importlib mode, no __init__.py) gets the fixture from the root."""
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    pytester.makeconftest(ROOT_CONFTEST.read_text(encoding="utf-8"))
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    tests = pytester.mkdir("packages").joinpath("peer-ring-x", "tests")
    tests.mkdir(parents=True)
    tests.joinpath("test_needs_etcd.py").write_text(
        "def test_it(require_component):\n"
        "    require_component('etcd', False, 'apt-get install etcd-server')\n",
        encoding="utf-8",
    )
    result = pytester.runpytest_inprocess("--import-mode=importlib", "-rsf")
    result.assert_outcomes(**{outcome: 1})
    result.stdout.fnmatch_lines(["*required component 'etcd' is not available*"])
