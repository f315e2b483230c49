"""The collector's cost of the keys a rate-limiter node holds: the store and ``decide()``
alone, in one process, no network.

Makes ``--decisions`` decisions on random keys of ``--keys`` (as the owner's ``_decide``
does: get, decide, put a new entry; the store fills as keys are first hit), in batches of
``--batch`` whose decisions are held until the batch ends (as a forwarded batch's answers
are), and reports tracked objects per key held afterwards, full (generation 2) collections
during the decisions with their durations, and CPU per decision. Without batches nothing
would start a collection: a decision frees as many tracked objects as it allocates.
Run it against another tree for an A/B::

    PYTHONPATH=<tree>/packages/peer-ring-rate-limiter/src python tools/benchlib/ratelimit_gc.py
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import time
from typing import Any


def run(keys: int, decisions: int, batch: int, seed: int) -> dict[str, Any]:
    """One measurement at ``keys`` keys."""
    from peer_ring.ratelimit import Limit
    from peer_ring.ratelimit._algorithms import decide, expires_at
    from peer_ring.ratelimit._store import StateStore
    from peer_ring.ratelimit._wire import Entry

    rng = random.Random(seed)
    limit = Limit.per_second(1000)
    clock = time.monotonic
    store = StateStore(clock, lambda k: hash(k) % 2048, retain=30.0)
    # Tuples of untracked items, and the random picks made per batch: a list of millions
    # of numbers would be walked by every full collection and hide what is measured.
    names = tuple(f"bench:{i}".encode() for i in range(keys))
    parts = tuple(hash(k) % 2048 for k in names)
    for _ in range(3):
        gc.collect()
    base = len(gc.get_objects())

    def one(i: int) -> Any:
        kb, p = names[i], parts[i]
        now = clock()
        entry = store.get(kb, p)
        state = entry.state if entry is not None and entry.expires > now else None
        new, d = decide(state, limit, 1, now)
        if new is not state:
            seq = (entry.seq if entry is not None else 0) + 1
            store.put(kb, Entry(seq, new, expires_at(new, limit, now)), p)
        return d

    full: list[float] = []
    started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            full.append((time.perf_counter() - started[0]) * 1000)

    gc.callbacks.append(on_gc)
    cpu = time.process_time()
    for at in range(0, decisions, batch):
        answers = [one(rng.randrange(keys)) for _ in range(min(batch, decisions - at))]
    cpu = time.process_time() - cpu
    gc.callbacks.remove(on_gc)
    del answers
    for _ in range(3):
        gc.collect()
    per_key = (len(gc.get_objects()) - base) / len(store)
    return {
        "keys": keys,
        "held": len(store),
        "decisions": decisions,
        "tracked_per_key": round(per_key, 3),
        "full_collections": len(full),
        "full_ms": [round(x, 1) for x in full],
        "cpu_us_per_decision": round(cpu / decisions * 1e6, 2),
    }


def main() -> None:
    """Command line: one JSON line per ``--keys`` value."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keys", type=int, nargs="+", default=[50_000, 200_000])
    p.add_argument("--decisions", type=int, default=1_500_000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    for n in args.keys:
        print(json.dumps(run(n, args.decisions, args.batch, args.seed)), flush=True)


if __name__ == "__main__":
    main()
