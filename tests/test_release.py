"""tools/release, run for real in a throw-away git repository.

The repository is a minimal copy of this monorepo: the real release script and workspace
pyproject.toml, the real pyproject.toml and CHANGELOG.md of one distribution, a stand-in
module, README and version file, and fragments written by the test. Real git, hatch and
towncrier do the work.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DIST = "peer-ring-discovery-static"
LEAF = "peer_ring/discovery/static"
WHEEL_PREFIX = DIST.replace("-", "_")


def git_env() -> dict[str, str]:
    """An environment in which git ignores the user's config (signing, hooks, names)."""
    env = dict(os.environ)
    env.update(
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_CONFIG_NOSYSTEM="1",
        GIT_AUTHOR_NAME="Release Test",
        GIT_AUTHOR_EMAIL="release-test@example.invalid",
        GIT_COMMITTER_NAME="Release Test",
        GIT_COMMITTER_EMAIL="release-test@example.invalid",
    )
    return env


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` and return its stdout."""
    proc = subprocess.run(
        ["git", *args], cwd=repo, env=git_env(), text=True, capture_output=True, check=True
    )
    return proc.stdout


def release(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the copied tools/release inside ``repo`` (as a user would, from a subfolder)."""
    return subprocess.run(
        [sys.executable, str(repo / "tools" / "release"), *args],
        cwd=repo / "packages",
        env=git_env(),
        text=True,
        capture_output=True,
        timeout=300,
        check=False,
    )


def write_fragment(repo: Path, name: str, text: str) -> Path:
    """Write changes/<DIST>/<name> and return its path."""
    path = repo / "changes" / DIST / name
    path.write_text(text + "\n", encoding="utf-8")
    return path


def make_repo(root: Path) -> Path:
    """Build and commit the minimal monorepo; return its path."""
    repo = root / "repo"
    pkg = repo / "packages" / DIST
    (repo / "tools").mkdir(parents=True)
    shutil.copy2(REPO / "tools" / "release", repo / "tools" / "release")
    shutil.copy2(REPO / ".gitignore", repo / ".gitignore")
    shutil.copy2(REPO / "pyproject.toml", repo / "pyproject.toml")  # the workspace root
    (pkg / "src" / LEAF).mkdir(parents=True)
    for name in ("pyproject.toml", "CHANGELOG.md"):
        shutil.copy2(REPO / "packages" / DIST / name, pkg / name)
    (pkg / "README.md").write_text(f"# {DIST}\n", encoding="utf-8")
    about = pkg / "src" / LEAF / "__about__.py"
    about.write_text('__version__ = "0.1.0"\n', encoding="utf-8")
    (pkg / "src" / LEAF / "py.typed").write_text("", encoding="utf-8")
    (pkg / "src" / LEAF / "__init__.py").write_text('"""Stand-in."""\n', encoding="utf-8")
    (repo / "changes" / DIST).mkdir(parents=True)
    (repo / "changes" / DIST / ".gitkeep").write_text("", encoding="utf-8")
    write_fragment(
        repo, "static-env.added.md", "`StaticDiscovery.from_env()` reads PEER_RING_PEERS."
    )
    write_fragment(repo, "42.fixed.md", "Duplicate peers no longer appear twice.")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "initial")
    return repo


def snapshot(repo: Path) -> dict[str, object]:
    """Everything a release may change: HEAD, tags, status, and every file's bytes."""
    files = {
        str(p.relative_to(repo)): p.read_bytes()
        for p in sorted(repo.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(repo).parts
    }
    return {
        "head": git(repo, "rev-parse", "HEAD"),
        "tags": git(repo, "tag", "--list"),
        "status": git(repo, "status", "--porcelain", "--ignored"),
        "files": files,
    }


@pytest.fixture
def fresh_repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path)


def test_dry_run_prints_the_plan_and_changes_nothing(fresh_repo: Path) -> None:
    repo = fresh_repo
    before = snapshot(repo)
    proc = release(repo, DIST, "minor", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"release {DIST} 0.1.0 -> 0.2.0" in out
    assert f"{DIST}-v0.2.0" in out
    assert "## 0.2.0" in out  # the changelog text it would write
    assert "`StaticDiscovery.from_env()` reads PEER_RING_PEERS." in out
    assert f"changes/{DIST}/42.fixed.md" in out  # the fragments it would remove
    assert "nothing was changed" in out
    assert snapshot(repo) == before


@pytest.fixture(scope="module")
def released(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One real release (0.1.0 -> 0.2.0), shared by the tests that inspect its results."""
    repo = make_repo(tmp_path_factory.mktemp("release"))
    return repo, release(repo, DIST, "minor")


def test_release_bumps_commits_and_tags(
    released: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    repo, proc = released
    assert proc.returncode == 0, proc.stdout + proc.stderr
    about = repo / "packages" / DIST / "src" / LEAF / "__about__.py"
    assert about.read_text(encoding="utf-8") == '__version__ = "0.2.0"\n'
    tag = f"{DIST}-v0.2.0"
    assert git(repo, "tag", "--list").split() == [tag]
    assert git(repo, "rev-parse", f"{tag}^{{commit}}") == git(repo, "rev-parse", "HEAD")
    assert git(repo, "cat-file", "-t", tag).strip() == "tag"  # annotated
    assert git(repo, "log", "-1", "--format=%s").strip() == f"release: {DIST} 0.2.0"
    assert git(repo, "status", "--porcelain") == ""


def test_release_builds_the_changelog_and_removes_fragments(
    released: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    repo, proc = released
    assert proc.returncode == 0, proc.stdout + proc.stderr
    changelog = (repo / "packages" / DIST / "CHANGELOG.md").read_text(encoding="utf-8")
    marker = "<!-- towncrier release notes start -->"
    assert marker in changelog
    notes = changelog.split(marker, 1)[1]
    assert notes.lstrip().startswith("## 0.2.0 (")
    added = notes.index("### Added")
    fixed = notes.index("### Fixed")
    assert added < notes.index("StaticDiscovery.from_env()") < fixed
    assert fixed < notes.index("Duplicate peers no longer appear twice.")
    fragments = repo / "changes" / DIST
    assert sorted(p.name for p in fragments.iterdir()) == [".gitkeep"]
    assert git(repo, "ls-files", f"changes/{DIST}").split() == [f"changes/{DIST}/.gitkeep"]


def test_release_builds_sdist_and_wheel(
    released: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    repo, proc = released
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = repo / "dist" / DIST
    assert sorted(p.name for p in out.iterdir()) == [
        f"{WHEEL_PREFIX}-0.2.0-py3-none-any.whl",
        f"{WHEEL_PREFIX}-0.2.0.tar.gz",
    ]
    with zipfile.ZipFile(out / f"{WHEEL_PREFIX}-0.2.0-py3-none-any.whl") as wheel:
        names = set(wheel.namelist())
    assert f"{LEAF}/py.typed" in names
    assert "peer_ring/__init__.py" not in names
    assert "peer_ring/discovery/__init__.py" not in names


def test_second_release_with_explicit_version(
    released: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    released_repo, first = released
    assert first.returncode == 0, first.stdout + first.stderr
    # A copy: the other tests read the shared first release, in any order (pytest-randomly).
    repo = tmp_path / "repo"
    shutil.copytree(released_repo, repo, symlinks=True)
    # Nothing left to release right after a release.
    empty = release(repo, DIST, "patch")
    assert empty.returncode == 1
    assert "no changelog fragments" in empty.stderr

    write_fragment(repo, "api.changed.md", "Peers are compared by address only.")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "change")
    proc = release(repo, DIST, "1.0.0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert set(git(repo, "tag", "--list").split()) == {f"{DIST}-v0.2.0", f"{DIST}-v1.0.0"}
    changelog = (repo / "packages" / DIST / "CHANGELOG.md").read_text(encoding="utf-8")
    # Newest release first, the older one kept below it.
    assert changelog.index("## 1.0.0 (") < changelog.index("## 0.2.0 (")
    assert "Peers are compared by address only." in changelog
    assert (repo / "dist" / DIST / f"{WHEEL_PREFIX}-1.0.0-py3-none-any.whl").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("peer-ring-nope", "patch"), "unknown distribution 'peer-ring-nope'"),
        ((DIST, "banana"), "bad version 'banana'"),
        ((DIST, "0.1.0"), "not greater than the current 0.1.0"),
        ((DIST, "0.0.9", "--dry-run"), "not greater than the current 0.1.0"),
    ],
)
def test_bad_arguments_are_refused(fresh_repo: Path, args: tuple[str, ...], message: str) -> None:
    before = snapshot(fresh_repo)
    proc = release(fresh_repo, *args)
    assert proc.returncode == 1
    assert message in proc.stderr
    assert snapshot(fresh_repo) == before


def test_dirty_tree_is_refused(fresh_repo: Path) -> None:
    (fresh_repo / "packages" / DIST / "README.md").write_text("edited\n", encoding="utf-8")
    proc = release(fresh_repo, DIST, "patch")
    assert proc.returncode == 1
    assert "not clean" in proc.stderr
    assert git(fresh_repo, "tag", "--list") == ""


def test_invalid_fragment_name_is_refused(fresh_repo: Path) -> None:
    write_fragment(fresh_repo, "oops.feature.md", "Wrong type.")
    git(fresh_repo, "add", "-A")
    git(fresh_repo, "commit", "-q", "-m", "bad fragment")
    proc = release(fresh_repo, DIST, "patch", "--dry-run")
    assert proc.returncode == 1
    assert "invalid fragment name(s)" in proc.stderr
    assert "oops.feature.md" in proc.stderr


def test_existing_tag_is_refused(fresh_repo: Path) -> None:
    git(fresh_repo, "tag", f"{DIST}-v0.1.1")
    proc = release(fresh_repo, DIST, "patch")
    assert proc.returncode == 1
    assert f"tag {DIST}-v0.1.1 already exists" in proc.stderr
    about = fresh_repo / "packages" / DIST / "src" / LEAF / "__about__.py"
    assert '"0.1.0"' in about.read_text(encoding="utf-8")
