"""Every recipe of docs/cookbook.md runs as written: each examples/cookbook/*.py starts three
nodes over real gRPC (127.0.0.1-3) in its own process and asserts its own outcome."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from peer_ring.core.testing import free_port

COOKBOOK = Path(__file__).parents[1] / "examples" / "cookbook"
DOC = Path(__file__).parents[1] / "docs" / "cookbook.md"
RECIPES = sorted(p.stem for p in COOKBOOK.glob("*.py"))


def test_every_recipe_is_in_the_cookbook() -> None:
    assert RECIPES == ["caching", "locks", "rate_limiting", "work_queue"]
    text = DOC.read_text(encoding="utf-8")
    for recipe in RECIPES:
        assert f"examples/cookbook/{recipe}.py" in text, recipe


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_runs(recipe: str) -> None:
    port = free_port("127.0.0.1", "127.0.0.2", "127.0.0.3")
    out = subprocess.run(
        [sys.executable, str(COOKBOOK / f"{recipe}.py"), str(port)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"{recipe.replace('_', ' ')} ok" in out.stdout
