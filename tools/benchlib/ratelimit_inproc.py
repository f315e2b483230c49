"""Per-decision counts of the rate limiter, load-independent: three nodes in ONE process.

``python tools/benchlib/ratelimit_inproc.py [--replication 2] [--concurrency 64]
[--decisions 60000] [--rate 0] [--profile]``

Three :class:`RateLimiter` nodes on 127.0.0.1-3 over the real TCP transport, in one process
on one uvloop, each running ``--concurrency`` closed loops (or, with ``--rate``, an open
loop of that many hits/s per node on keys the node does not own: every hit forwarded) on
random keys (fixed window). Reported per decision: CPU of the process (``process_time``:
all three nodes and the load, so the machine's other work changes it far less than a
wall-clock rate), requests between nodes (forwarded batches, replication messages,
relayed-decision messages) and, with ``--profile``, the calls per decision of the event
loop's object makers and timers (futures, tasks, ``call_soon``, ``call_later``/``call_at``,
socket writes) and the functions with the most own time. cProfile slows everything down
several times: its counts are exact, its times are shares only.

To compare two trees: run this file from each tree (``PYTHONPATH`` is set from the file's
own location), alternated.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for sub in ("packages/peer-ring-core/src", "packages/peer-ring-rate-limiter/src"):
    sys.path.insert(0, str(ROOT / sub))

from peer_ring.core import PeerRingConfig  # noqa: E402
from peer_ring.core.testing import FixedDiscovery, free_port  # noqa: E402
from peer_ring.ratelimit import Algorithm, Limit, RateLimiter  # noqa: E402

HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
COUNTED = (
    "create_future",
    "create_task",
    "call_soon",
    "call_later",
    "call_at",
    "write",
    "set_result",
)


async def main(args: argparse.Namespace) -> dict[str, float]:
    port = free_port(*HOSTS)
    peers = [f"{h}:{port}" for h in HOSTS]
    config = PeerRingConfig(request_timeout=10.0, down_after=None, transport="tcp")
    limiters = [
        RateLimiter(FixedDiscovery(a, peers), replication=args.replication, config=config)
        for a in peers
    ]
    for rl in limiters:
        await rl.start()
    await asyncio.gather(*(rl.node.wait_ready() for rl in limiters))
    limit = Limit(1000, 1.0, algorithm=Algorithm.FIXED_WINDOW)
    keys = [f"user:{i}" for i in range(args.keys)]
    rng = random.Random(1)
    done = 0
    target = args.decisions

    async def closed(rl: RateLimiter) -> None:
        nonlocal done
        while done < target:
            await rl.hit(rng.choice(keys), limit)
            done += 1

    # The keys each node forwards (another node owns them), found before the measurement.
    others = {
        rl.node.address: [k for k in keys if rl.node.preference_list(k.encode(), 1)[0] != a]
        for rl in limiters
        for a in (rl.node.address,)
    }

    async def open_loop(rl: RateLimiter) -> None:
        nonlocal done
        mine = others[rl.node.address]
        interval = 1.0 / args.rate
        tasks: set[asyncio.Task[object]] = set()
        n = target // len(limiters)
        start = time.monotonic()
        for i in range(n):
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            t = asyncio.ensure_future(rl.hit(rng.choice(mine), limit))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        while tasks:
            await asyncio.gather(*tasks)
        done += n

    # Warm up (connections, first collections), then measure.
    await asyncio.gather(*(rl.hit(k, limit) for rl in limiters for k in keys[:300]))
    before = [rl.stats() for rl in limiters]
    prof = cProfile.Profile() if args.profile else None
    cpu0 = time.process_time()
    if prof is not None:
        prof.enable()
    if args.rate:
        await asyncio.gather(*(open_loop(rl) for rl in limiters))
    else:
        await asyncio.gather(*(closed(rl) for rl in limiters for _ in range(args.concurrency)))
    if prof is not None:
        prof.disable()
    cpu = time.process_time() - cpu0
    after = [rl.stats() for rl in limiters]
    for rl in limiters:
        await rl.stop()

    def delta(name: str) -> float:
        pairs = zip(after, before, strict=True)
        return float(sum(a.get(name, 0) - b.get(name, 0) for a, b in pairs))

    decided = delta("allowed") + delta("denied")
    requests = delta("batches") + delta("state_batches") + delta("relay_messages")
    out = {
        "decisions": decided,
        "cpu_us_per_decision": round(1e6 * cpu / decided, 1),
        "requests_per_1k": round(1000 * requests / decided, 1),
        "forward_batches_per_1k": round(1000 * delta("batches") / decided, 1),
        "state_messages_per_1k": round(1000 * delta("state_batches") / decided, 1),
        "relay_messages_per_1k": round(1000 * delta("relay_messages") / decided, 1),
        "relayed_pct_of_forwarded": round(100 * delta("relayed") / max(1, delta("forwarded")), 1),
    }
    if prof is not None:
        st = pstats.Stats(prof)
        out["python_calls_per_decision"] = round(st.total_calls / decided, 1)  # type: ignore[attr-defined]
        calls: dict[str, int] = dict.fromkeys(COUNTED, 0)
        for (_, _, name), (_, nc, *_rest) in st.stats.items():  # type: ignore[attr-defined]
            for c in COUNTED:
                if f"'{c}'" in name or name == c:
                    calls[c] += nc
        for c, n in calls.items():
            out[f"{c}_per_decision"] = round(n / decided, 2)
        share: dict[str, float] = {}
        for (path, _, name), (_, _, tottime, *_rest) in st.stats.items():  # type: ignore[attr-defined]
            group = _group(path, name)
            share[group] = share.get(group, 0.0) + tottime
        total = sum(share.values()) or 1.0
        for group, t in sorted(share.items(), key=lambda x: -x[1]):
            out[f"own time: {group} %"] = round(100 * t / total, 1)
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(args.top)
        out["_profile"] = buf.getvalue()  # type: ignore[assignment]
    return out


def _group(path: str, name: str) -> str:
    """The part of the stack a profiled function belongs to."""
    if "peer_ring/ratelimit/" in path:
        base = path.rsplit("/", 1)[-1]
        if base in ("_wire.py", "_state.py", "_compact.py", "_relay.py", "_records.py"):
            return "limiter codec"
        if base in ("_batcher.py", "_replicator.py"):
            return "limiter batches and futures"
        return "limiter logic"
    if "core/transport/" in path:
        return "core transport (frames)"
    if "peer_ring/core/" in path:
        return "core other"
    if "ratelimit_inproc" in path or "random.py" in path:
        return "load (bench client)"
    if "asyncio" in path or "uvloop" in name or "Future" in name or "Task" in name:
        return "asyncio / uvloop"
    if path == "~":
        return "builtins (C) called from Python"
    return "other"


def cli(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--replication", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=64, help="closed loops per node")
    p.add_argument("--decisions", type=int, default=60_000)
    p.add_argument("--keys", type=int, default=10_000)
    p.add_argument("--rate", type=float, default=0.0, help="open loop, hits/s per node")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--top", type=int, default=30)
    p.add_argument(
        "--asyncio",
        action="store_true",
        help="the standard asyncio loop instead of uvloop: its loop methods are Python, so"
        " --profile counts the futures, tasks, call_soon and timers per decision",
    )
    args = p.parse_args(argv)
    if not args.asyncio:
        import uvloop

        uvloop.install()
    out = asyncio.run(main(args))
    prof = out.pop("_profile", None)
    for k, v in out.items():
        print(f"{k:32s} {v}")
    if prof:
        print(prof)


if __name__ == "__main__":
    cli()
