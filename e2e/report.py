"""Figures of each scenario: a JSON file per scenario and a Markdown summary of all of them.

Written under ``e2e/results/`` (git-ignored; ``PEER_RING_E2E_RESULTS`` moves it): one
``<scenario>.json`` per run of a scenario (the last run wins) and ``summary.md``, a table
rebuilt from every JSON file present. The same table is printed at the end of the pytest
run (see ``conftest.py``), so CI logs show the figures too.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(os.environ.get("PEER_RING_E2E_RESULTS", Path(__file__).parent / "results"))

#: Figures shown in the summary table, in this order (others stay in the JSON files).
#: ``headline`` is the one figure specific to each scenario (set by the scenario).
TABLE_COLUMNS = (
    ("acknowledged_writes", "acked writes"),
    ("lost", "lost"),
    ("failed_ops", "failed ops"),
    ("converge_seconds", "converge (s)"),
    ("replicas_ok_ratio", "replicas ok"),
    ("headline", "scenario figure"),
)


@dataclass(slots=True)
class ScenarioReport:
    """The figures of one scenario run.

    Attributes:
        scenario: short id (``s1_kill9``...).
        title: one line saying what the scenario does.
        driver: the driver's description.
        figures: named figures (JSON-friendly values).
        passed: whether every assertion of the scenario held (set by the test at the end).
        notes: free-form remarks (what could not be checked and why).
    """

    scenario: str
    title: str
    driver: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    passed: bool = False
    notes: list[str] = field(default_factory=list)
    started: str = field(default_factory=lambda: _now())

    def add(self, **figures: Any) -> None:
        """Record figures (later values replace earlier ones of the same name)."""
        self.figures.update(figures)

    def note(self, text: str) -> None:
        """Record a remark."""
        self.notes.append(text)

    def to_json(self) -> dict[str, Any]:
        """The JSON document written to ``<scenario>.json``."""
        return {
            "scenario": self.scenario,
            "title": self.title,
            "driver": self.driver,
            "passed": self.passed,
            "started": self.started,
            "machine": f"{platform.node()} ({os.cpu_count()} cpus)",
            "figures": self.figures,
            "notes": self.notes,
        }

    def write(self, directory: Path = RESULTS_DIR) -> Path:
        """Write ``<scenario>.json`` and rebuild ``summary.md``; returns the JSON path."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.scenario}.json"
        path.write_text(json.dumps(self.to_json(), indent=2, default=str) + "\n")
        (directory / "summary.md").write_text(summary_markdown(directory))
        return path

    def text(self) -> str:
        """A few lines for the test output."""
        lines = [f"[{self.scenario}] {self.title} — {'PASS' if self.passed else 'FAIL'}"]
        for name, value in self.figures.items():
            if isinstance(value, list) and not value:
                continue
            lines.append(f"    {name}: {value}")
        lines.extend(f"    note: {n}" for n in self.notes)
        return "\n".join(lines)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def load_results(directory: Path = RESULTS_DIR) -> list[dict[str, Any]]:
    """Every ``*.json`` result in ``directory``, sorted by scenario."""
    results = []
    for path in sorted(directory.glob("*.json")):
        try:
            results.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return results


def _cell(value: Any, key: str = "") -> str:
    if value is None:
        return "—"
    if key.endswith("_ratio") and isinstance(value, int | float):
        return f"{value:.1%}"
    if isinstance(value, float):
        return f"{value:.3g}" if value < 100 else f"{value:.0f}"
    return str(value)


def summary_markdown(directory: Path = RESULTS_DIR) -> str:
    """The Markdown table of every result in ``directory``."""
    header = ["scenario", "result", *(label for _key, label in TABLE_COLUMNS), "run"]
    lines = [
        "# e2e figures",
        "",
        "Written by `pytest e2e -m e2e` (e2e/report.py); one row per scenario, last run.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for result in load_results(directory):
        figures = result.get("figures", {})
        row = [
            result.get("scenario", "?"),
            "pass" if result.get("passed") else "FAIL",
            *(_cell(figures.get(key), key) for key, _label in TABLE_COLUMNS),
            result.get("started", ""),
        ]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    return "\n".join(lines)
