"""The monorepo's conventions (README "Repository layout", CONTRIBUTING.md), checked.

These are cheap and run with every test run, so a new package or a misnamed changelog
fragment fails here, long before a release or a broken wheel would show it.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p.parent for p in (REPO / "packages").glob("*/pyproject.toml"))
EXPECTED = {
    "peer-ring-core",
    "peer-ring-discovery-static",
    "peer-ring-kv-store",
    "peer-ring-discovery-k8s",
}
FRAGMENT_IGNORED = {".gitkeep", ".keep", ".gitignore", "README", "README.md", "README.rst"}


def pyproject(path: Path) -> dict:
    return tomllib.loads(path.read_text(encoding="utf-8"))


def test_the_four_packages_exist() -> None:
    assert {p.name for p in PACKAGES} >= EXPECTED


@pytest.mark.parametrize("pkg", PACKAGES, ids=lambda p: p.name)
def test_package_metadata(pkg: Path) -> None:
    config = pyproject(pkg / "pyproject.toml")
    project = config["project"]
    assert project["name"] == pkg.name
    assert project["requires-python"] == ">=3.11"
    assert project["dynamic"] == ["version"]
    assert config["build-system"]["build-backend"] == "hatchling.build"
    assert config["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == ["src/peer_ring"]
    # Sibling packages are ranges so that each package is released on its own.
    for dep in project.get("dependencies", []):
        if dep.startswith("peer-ring-"):
            assert "==" not in dep, f"{pkg.name}: pinned sibling dependency {dep!r}"
            assert re.fullmatch(r"peer-ring-[a-z0-9-]+>=\d+\.\d+,<\d+\.\d+", dep), dep


@pytest.mark.parametrize("pkg", PACKAGES, ids=lambda p: p.name)
def test_package_files(pkg: Path) -> None:
    config = pyproject(pkg / "pyproject.toml")
    about = pkg / config["tool"]["hatch"]["version"]["path"]
    leaf = about.parent
    assert re.search(r'^__version__ = "\d+\.\d+\.\d+"$', about.read_text(), re.MULTILINE)
    assert (leaf / "py.typed").is_file()
    assert (pkg / "README.md").is_file()
    changelog = (pkg / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "<!-- towncrier release notes start -->" in changelog
    # No __init__.py in the namespace folders between src/ and the leaf package.
    src = pkg / "src"
    folder = leaf.parent
    while folder != src:
        assert not (folder / "__init__.py").exists(), f"{folder} must stay a PEP 420 namespace"
        folder = folder.parent


@pytest.mark.parametrize("pkg", PACKAGES, ids=lambda p: p.name)
def test_towncrier_points_at_the_package_fragments(pkg: Path) -> None:
    towncrier = pyproject(pkg / "pyproject.toml")["tool"]["towncrier"]
    assert (pkg / towncrier["directory"]).resolve() == REPO / "changes" / pkg.name
    assert (REPO / "changes" / pkg.name).is_dir()
    assert {t["directory"] for t in towncrier["type"]} == {"added", "changed", "fixed", "removed"}


def test_no_namespace_init_anywhere() -> None:
    for pkg in PACKAGES:
        assert not (pkg / "src" / "peer_ring" / "__init__.py").exists(), pkg.name
        assert not (pkg / "src" / "peer_ring" / "discovery" / "__init__.py").exists(), pkg.name


def test_changelog_fragments_are_well_named() -> None:
    """changes/<dist>/<id>.<added|changed|fixed|removed>.md, for an existing <dist>."""
    names = {p.name for p in PACKAGES}
    bad = []
    for folder in sorted((REPO / "changes").iterdir()):
        if not folder.is_dir():
            continue
        if folder.name not in names:
            bad.append(f"{folder.name}/ (no package of that name)")
            continue
        for fragment in sorted(folder.iterdir()):
            if fragment.name in FRAGMENT_IGNORED:
                continue
            if not re.fullmatch(r"[^.]+\.(added|changed|fixed|removed)(\.\d+)?\.md", fragment.name):
                bad.append(f"{folder.name}/{fragment.name}")
    assert not bad, f"misnamed changelog fragments: {bad}"


def test_root_config_covers_every_package() -> None:
    root = pyproject(REPO / "pyproject.toml")
    mypy_path = set(root["tool"]["mypy"]["mypy_path"])
    requirements = (REPO / "requirements-dev.txt").read_text(encoding="utf-8")
    workflow = (REPO / ".github" / "workflows" / "ci.yml").read_text(encoding="utf-8")
    for pkg in PACKAGES:
        assert f"packages/{pkg.name}/src" in mypy_path, pkg.name
        assert re.search(rf"^-e packages/{pkg.name}(\[.*\])?$", requirements, re.MULTILINE)
        assert pkg.name in workflow, f"{pkg.name} has no job in ci.yml"


def test_hatch_and_pip_setups_agree() -> None:
    """The hatch workspace installs the same tools as requirements-dev.txt."""
    root = pyproject(REPO / "pyproject.toml")
    envs = root["tool"]["hatch"]["envs"]
    requirements = {
        line.split(" #", 1)[0].strip()  # pip allows trailing comments
        for line in (REPO / "requirements-dev.txt").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith(("#", "-e "))
    }
    hatch_deps = (
        set(envs["default"]["dependencies"])
        | set(envs["types"]["extra-dependencies"])
        | set(envs["lint"]["dependencies"])
    )
    assert hatch_deps <= requirements, hatch_deps - requirements
    assert envs["default"]["workspace"]["members"] == ["packages/*"]


def quick_start_commands() -> list[str]:
    """The first code block under the README's Quick start heading, as quickstart-check reads it."""
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"^#+ *quick ?start", line, re.I))
    fence = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("```"))
    end = next(i for i in range(fence + 1, len(lines)) if lines[i].startswith("```"))
    return [line for line in lines[fence + 1 : end] if line.strip()]


def test_readme_quick_start_has_the_two_commands() -> None:
    first, second = quick_start_commands()
    assert "pip install" in first
    for dist in ("peer-ring-core", "peer-ring-discovery-static", "peer-ring-kv-store"):
        assert f"./packages/{dist}" in first
    assert first.endswith("peer-ring-kv demo")
    assert "requirements-dev.txt" in second
    assert "pytest" in second
    assert not any(line.lstrip().startswith("#") for line in (first, second))
