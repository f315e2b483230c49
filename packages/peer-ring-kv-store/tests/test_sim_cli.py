"""``python -m peer_ring.kv.sim``: run, replay and shrink, their output and exit statuses.

Passing seeds are real simulator runs (a second or two each). Failing ones come from the
simulator with a planted bug (coordinators ignoring refusals, as in test_sim.py) or, for
shrink, whose greedy search needs dozens of runs, from a stand-in ``run_seed`` that fails
exactly while the link loss is on.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator

import pytest

import peer_ring.kv._store_write as kv_write
import peer_ring.kv.sim as kv_sim
from peer_ring.core.testing.sim import SimConfig
from peer_ring.kv._sim_cli import _range, main


@pytest.fixture(autouse=True)
def _logging_back_on() -> Iterator[None]:
    yield
    logging.disable(logging.NOTSET)  # main() turns logging off for its runs


def test_seed_ranges() -> None:
    assert _range("3:6") == range(3, 6)
    assert _range("7") == range(7, 8)
    with pytest.raises(ValueError):
        _range("a:b")


def test_run_passing_seeds_in_process_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--seeds", "0:2", "-j", "0"]) == 0  # -j 0 means one job
    out = capsys.readouterr().out
    assert "2 seeds, 0 failed" in out and "1 jobs" in out
    assert "FAILED" not in out and "replay" not in out


def test_run_with_two_worker_processes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--seeds", "2:4", "-j", "2"]) == 0
    assert "2 seeds, 0 failed" in capsys.readouterr().out


def test_run_reports_failing_seeds_and_how_to_replay(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(kv_write, "newest_refusal", lambda payloads: None)
    failing = [s for s in range(6) if not kv_sim.run_seed(s).ok]
    assert failing
    seed = failing[0]
    assert main(["run", "--seeds", f"{seed}:{seed + 1}", "-j", "1"]) == 1
    out = capsys.readouterr().out
    assert f"seed {seed} FAILED: " in out
    assert "1 seeds, 1 failed" in out
    assert f"replay one with: tools/sim replay {seed} --trace" in out


def test_replay_prints_the_trace_on_request(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "1"]) == 0
    quiet = capsys.readouterr().out
    assert quiet.startswith("seed 1: ok, ") and quiet.endswith(" ops\n")
    assert main(["replay", "1", "--trace"]) == 0
    traced = capsys.readouterr().out
    assert len(traced.splitlines()) > 100 and "nemesis" in traced
    assert traced.endswith(quiet)


def test_replay_of_a_failing_seed_prints_its_errors_and_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    result = kv_sim.SimResult(seed=4, errors=["lost write of k1", "lost write of k2"])
    monkeypatch.setattr(kv_sim, "run_seed", lambda seed, config=None: result)
    assert main(["replay", "4"]) == 1
    assert capsys.readouterr().out == (
        "ERROR lost write of k1\nERROR lost write of k2\nseed 4: FAILED, 0 ops\n"
    )


def test_shrink_a_seed_that_passes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(kv_sim, "run_seed", lambda seed, config=None: kv_sim.SimResult(seed))
    assert main(["shrink", "9"]) == 0
    assert capsys.readouterr().out == "seed 9 does not fail\n"


def test_shrink_keeps_only_the_fault_that_makes_the_seed_fail(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    configs: list[SimConfig] = []

    def run_seed(seed: int, config: SimConfig | None = None) -> kv_sim.SimResult:
        config = config or SimConfig()
        configs.append(config)
        lossy = config.links.loss > 0
        return kv_sim.SimResult(seed, errors=["lost"] if lossy else [])

    monkeypatch.setattr(kv_sim, "run_seed", run_seed)
    assert main(["shrink", "5"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("seed 5 still fails with: no crashes, no partitions")
    assert "no loss" not in out[0]
    smaller = SimConfig()
    assert configs[0] == smaller  # the default configuration is tried first
    assert "loss=" in out[1] and "crashes=False" in out[1]
    assert dataclasses.replace(smaller, crashes=False) != smaller  # the default has crashes
