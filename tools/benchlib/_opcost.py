"""The Python work of one replicated operation, measured in one process (``--op-cost``).

A cluster of ``nodes`` KV stores runs *in this process* on real loopback transports
(TCP by default), so the process's CPU time is the work of every node for every operation
(coordinator, transports both ways, replicas' handlers), with no idle time and no other
process in it. Node 0 runs a closed loop (``concurrency`` in flight, 50/50 get/set,
100-byte values) and the tool reports, per configuration:

- CPU µs per operation (``time.process_time`` over ``ops`` operations; all nodes);
- garbage collections during those operations, per generation, with the CPU they took
  and the longest one (a collection stops the event loop: it is the host's loop delay);
- Python function calls per operation (a second, shorter pass under ``cProfile``, C
  builtins included), and the functions called most per operation.

Calls per operation do not depend on the machine's load, so they compare code versions
exactly; CPU per operation moves with the load less than throughput does.

Run as ``python -m benchlib._opcost '<spec JSON>'`` (``tools/bench --op-cost``). With
``"profile_path": P`` in the spec, each configuration's profile is also written to
``P.r<R>q<Q>.pstats``.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import json
import pstats
import sys
import time
from typing import Any

from benchlib._load import make_keys, make_value
from benchlib._procs import node_addresses
from benchlib._worker import PREFIX, GcMeter, die_with_parent


async def _loop(
    kv: Any,
    keys: list[str],
    value: bytes,
    ops: int,
    concurrency: int,
    q: int,
    kinds: dict[str, int] | None = None,
    replication: int | None = None,
) -> int:
    remaining = [ops]
    errors = [0]
    if kinds is None:
        kinds = {}

    async def worker(offset: int) -> None:
        i = offset
        while remaining[0] > 0:
            remaining[0] -= 1
            key = keys[(i * 7919) % len(keys)]
            i += 1
            try:
                if i & 1:
                    await kv.get(key, quorum=q, replication=replication)
                else:
                    await kv.set(key, value, quorum=q, replication=replication)
            except Exception as exc:
                errors[0] += 1
                text = f"{type(exc).__name__}: {str(exc)[:160]}"
                kinds[text] = kinds.get(text, 0) + 1

    await asyncio.gather(*(worker(n * 101) for n in range(concurrency)))
    return errors[0]


async def _one(spec: dict[str, Any], replication: int, quorum: int) -> dict[str, Any]:
    from peer_ring.core import PeerRingConfig
    from peer_ring.discovery.static import StaticDiscovery
    from peer_ring.kv import KVStore

    nodes = int(spec.get("nodes", 3))
    addresses = node_addresses(nodes, single_ip=False)
    # cProfile slows the loop about tenfold, enough for 64 in flight to pass the 50 ms
    # default of read_speculate_after in the profiled pass: speculative reads there would be
    # the profiler's artefact. A 1 s delay still arms and cancels the timer of every quorum
    # read (its cost is counted) but never fires; the counts are in the result.
    config = PeerRingConfig(
        transport=str(spec.get("transport", "tcp")),
        read_fanout=str(spec.get("read_fanout", "quorum")),
        read_speculate_after=spec.get("read_speculate_after", 1.0),
    )
    stores = [
        KVStore(
            StaticDiscovery(addresses, self_address=address),
            replication=replication,
            quorum=quorum,
            config=config,
        )
        for address in addresses
    ]
    for store in stores:
        await store.start()
    try:
        await asyncio.gather(*(s.wait_ready(60.0) for s in stores))
        kv = stores[0]
        keys = make_keys(int(spec["keys"]))
        value = make_value(int(spec["value_size"]))
        for start in range(0, len(keys), 500):
            batch: dict[str, object] = dict.fromkeys(keys[start : start + 500], value)
            await kv.mset(batch, quorum=replication)
        concurrency = int(spec["concurrency"])
        # "per_call_replication": pass replication= on every call too, as the cluster
        # workers of tools/bench do (their get/set are partials with both sizes).
        per_call = replication if spec.get("per_call_replication") else None
        await _loop(kv, keys, value, 2000, concurrency, quorum, None, per_call)  # warm-up
        ops = int(spec["ops"])
        meter = GcMeter()
        kinds: dict[str, int] = {}
        gc.callbacks.append(meter)
        cpu0 = time.process_time()
        wall0 = time.perf_counter()
        try:
            errors = await _loop(kv, keys, value, ops, concurrency, quorum, kinds, per_call)
        finally:
            gc.callbacks.remove(meter)
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - wall0
        profiled = int(spec["profile_ops"])
        profiler = cProfile.Profile()
        profiler.enable()
        await _loop(kv, keys, value, profiled, concurrency, quorum, None, per_call)
        profiler.disable()
        if spec.get("profile_path"):
            # For a look at the whole profile (pstats, snakeviz): one file per configuration.
            profiler.dump_stats(f"{spec['profile_path']}.r{replication}q{quorum}.pstats")
        stats = pstats.Stats(profiler)
        entries = stats.stats  # type: ignore[attr-defined]
        # Counted from the profiler's own entries, one per code object: pstats keys its
        # table by (file, line, name), so the generated __init__ of every dataclass
        # ("<string>", 2, "__init__") collapses into one entry and the others' calls were
        # lost (round 3's figures undercount by 4 calls per operation at R1/Q1, 10 at R3/Q2).
        calls = sum(entry.callcount for entry in profiler.getstats())
        kv_calls = _kv_calls(entries)
        top = sorted(entries.items(), key=lambda kv_: -kv_[1][1])[: int(spec.get("top", 25))]
        reads = kv.node.sync_status().get("reads", {})
        return {
            "read_fanout": config.read_fanout,
            "reads": reads,
            "replication": replication,
            "quorum": quorum,
            "transport": config.transport,
            "per_call_replication": per_call is not None,
            "ops": ops,
            "errors": errors,
            "error_kinds": kinds,
            "cpu_us_per_op": cpu / ops * 1e6,
            "wall_us_per_op": wall / ops * 1e6,
            "gc": meter.summary(ops),
            "calls_per_op": calls / profiled,
            "kv_calls_per_op": kv_calls / profiled,
            "top_calls_per_op": [
                {
                    "function": f"{func[2]} ({func[0].rsplit('/src/', 1)[-1]}:{func[1]})",
                    "calls_per_op": round(v[1] / profiled, 2),
                }
                for func, v in top
            ],
        }
    finally:
        for store in reversed(stores):
            await store.stop()


def _kv_calls(entries: dict[Any, Any]) -> int:
    """Calls of the KV store's own work: its Python functions (``peer_ring/kv/``) and the
    C functions they call (builtins, ``struct``, ``farmhash``...), from pstats entries."""
    total = 0
    for (path, _, _), (_, calls, _, _, callers) in entries.items():
        if "/peer_ring/kv/" in path:
            total += calls
        elif path == "~":  # a C function: count the calls made from the store's code
            total += sum(c[1] for caller, c in callers.items() if "/peer_ring/kv/" in caller[0])
    return total


async def _main(spec: dict[str, Any]) -> dict[str, Any]:
    results = []
    for r, q in spec["configs"]:
        results.append(await _one(spec, int(r), int(q)))
    return {"op_cost": results}


def format_op_cost(doc: dict[str, Any], top: int = 12) -> str:
    """Terminal lines of the op-cost measurement."""
    lines = ["Python work per operation, all nodes in one process (closed loop on node 0):"]
    for e in doc["op_cost"]:
        lines.append(
            f"  {e['transport']} R{e['replication']}/Q{e['quorum']}: "
            f"{e['cpu_us_per_op']:.1f} CPU us/op, {e['calls_per_op']:.0f} calls/op "
            f"(KV store {e.get('kv_calls_per_op', 0):.1f}) "
            f"({e['ops']} ops, {e['errors']} errors, reads to {e.get('read_fanout', 'all')}, "
            f"{e.get('reads', {}).get('speculative', 0)} speculative)"
        )
        gcs = ", ".join(
            f"gen{g['generation']} {g['per_1000_ops']:g}/1000 ops ({g['cpu_us_per_op']:g} us/op, "
            f"max {g['max_ms']:g} ms)"
            for g in e["gc"]
        )
        lines.append(f"    garbage collections: {gcs}")
        for t in e["top_calls_per_op"][:top]:
            lines.append(f"      {t['calls_per_op']:>6.2f}  {t['function']}")
    return "\n".join(lines)


def main() -> None:
    """Entry point: ``python -m benchlib._opcost '<spec JSON>'``."""
    die_with_parent()
    spec: dict[str, Any] = json.loads(sys.argv[1])
    from peer_ring.core import run

    result = run(_main(spec), use_uvloop=bool(spec.get("uvloop", True)))
    sys.stdout.write(PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
