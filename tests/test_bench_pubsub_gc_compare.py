"""``tools/bench pubsub --gc-compare``: every system runs with the collector's defaults and
then with the host tuning, and each ratio is taken against Redis Streams run with the same
settings. Argument handling only (the runs themselves are the smoke test's)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    sys.path.insert(0, str(TOOLS))
    try:
        return importlib.import_module("benchlib.pubsub")
    finally:
        sys.path.remove(str(TOOLS))


def test_without_the_flag_the_given_settings_run_once(bench: ModuleType) -> None:
    opts = bench.parse_args(["--gc-threshold", "5000"])
    [(label, run)] = bench._gc_variants(opts)
    assert label == "" and run.gc_threshold == 5000 and not run.gc_freeze


@pytest.mark.parametrize(("given", "tuned"), [([], 20_000), (["--gc-threshold", "7000"], 7000)])
def test_gc_compare_runs_defaults_then_the_host_tuning(
    bench: ModuleType, given: list[str], tuned: int
) -> None:
    opts = bench.parse_args(["--gc-compare", "--gc-freeze", *given])
    (plain_label, plain), (tuned_label, tuning) = bench._gc_variants(opts)
    assert (plain_label, plain.gc_threshold, plain.gc_freeze) == (" gc-default", None, False)
    assert (tuned_label, tuning.gc_threshold, tuning.gc_freeze) == (" gc-tuned", tuned, True)
    assert plain.nodes == tuning.nodes == opts.nodes  # everything else as given
    assert opts.gc_freeze  # the caller's options are not changed
