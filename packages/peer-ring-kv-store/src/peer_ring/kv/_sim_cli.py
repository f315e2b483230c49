"""``python -m peer_ring.kv.sim``: run many seeds, replay one, shrink a failure.

    python -m peer_ring.kv.sim run --seeds 0:1000 [-j 4]    # exit 1 if any seed fails
    python -m peer_ring.kv.sim replay 1234 [--trace]         # one seed, its errors (+ trace)
    python -m peer_ring.kv.sim shrink 1234                   # fewest fault kinds still failing

Runs are deterministic whatever ``PYTHONHASHSEED`` is (``tools/sim`` still pins it to 0).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Sequence

from peer_ring.core.testing.sim import SimConfig, shrink


def _one(seed: int) -> tuple[int, list[str]]:
    from peer_ring.kv.sim import run_seed

    return seed, run_seed(seed).errors


def _range(text: str) -> range:
    start, _, stop = text.partition(":")
    return range(int(start), int(stop)) if stop else range(int(start), int(start) + 1)


def _run(seeds: range, jobs: int) -> int:
    started = time.monotonic()
    failed: list[tuple[int, list[str]]] = []
    if jobs > 1:
        with multiprocessing.get_context("spawn").Pool(jobs, initializer=_quiet) as pool:
            outcomes = list(pool.imap_unordered(_one, seeds, chunksize=4))
    else:
        outcomes = [_one(s) for s in seeds]
    failed = sorted((s, e) for s, e in outcomes if e)
    elapsed = time.monotonic() - started
    for seed, errors in failed:
        print(f"seed {seed} FAILED: {errors[0]}" + (f" (+{len(errors) - 1})" if errors[1:] else ""))
    print(
        f"{len(seeds)} seeds, {len(failed)} failed, {elapsed:.1f} s "
        f"({len(seeds) / elapsed:.2f} seeds/s, {jobs} jobs)"
    )
    if failed:
        print(f"replay one with: tools/sim replay {failed[0][0]} --trace")
    return 1 if failed else 0


def _quiet() -> None:
    # The nodes log every suspicion and removal; a thousand runs of that is noise.
    logging.disable(logging.CRITICAL)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module docs)."""
    from peer_ring.kv.sim import run_seed

    parser = argparse.ArgumentParser(prog="python -m peer_ring.kv.sim")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="run many seeds")
    p_run.add_argument("--seeds", type=_range, default=range(0, 1000), help="A:B (B excluded)")
    p_run.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    p_replay = sub.add_parser("replay", help="run one seed and show what failed")
    p_replay.add_argument("seed", type=int)
    p_replay.add_argument("--trace", action="store_true", help="print every event")
    p_shrink = sub.add_parser("shrink", help="switch faults off while the seed fails")
    p_shrink.add_argument("seed", type=int)
    args = parser.parse_args(argv)
    _quiet()
    if args.cmd == "run":
        return _run(args.seeds, max(1, args.jobs))
    if args.cmd == "replay":
        result = run_seed(args.seed)
        if args.trace:
            print("\n".join(result.trace))
        for error in result.errors:
            print("ERROR", error)
        print(f"seed {args.seed}: {'ok' if result.ok else 'FAILED'}, {len(result.history)} ops")
        return 0 if result.ok else 1
    config = SimConfig()
    if run_seed(args.seed, config).ok:
        print(f"seed {args.seed} does not fail")
        return 0
    smaller, steps = shrink(config, lambda c: not run_seed(args.seed, c).ok)
    print(f"seed {args.seed} still fails with: {', '.join(steps) or '(nothing removed)'}")
    print(smaller)
    return 1


if __name__ == "__main__":
    sys.exit(main())
