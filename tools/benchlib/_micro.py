"""Micro-benchmarks (local get of an owned key) and the memory test, each in a fresh process.

Run as ``python -m benchlib._micro '<spec JSON>'``; prints one JSON line (prefixed like the
workers' events) with the measurements. A fresh process per test keeps the memory numbers
free of the parent's allocations and the timings free of its garbage.

Local get (issue 6 target: median <= 3 us): a 3-node cluster runs *in this process*
(real gRPC transports on 127.0.0.1..3, so the ring has three members), the store's default
``replication`` is 1 or 3, and node 0 reads keys it owns with ``quorum=1`` -- the path
that never touches the network. Four ways of timing it:

- ``timeit``: ``coro = kv.get(key, quorum=1); coro.send(None)`` in a ``timeit`` loop, no
  event loop involved (the coroutine completes without suspending). Many short repeats
  (500 calls each); per-op mean of each repeat, median and best (timeit's convention: on
  a shared machine the best repeat is the one no other process interrupted).
- ``await_batched``: ``await kv.get(key, quorum=1)`` inside a coroutine on the running
  (uvloop) loop, timed per batch of 100; per-op mean of each batch, median and p99.
- ``await_per_call``: the same, but each call timed on its own with ``perf_counter_ns``
  (minus the measured cost of two clock reads); median, p99 and p99.9 of single calls.
- ``engine``: ``kv.engine.get(key_bytes)``, the storage floor under the API.

Memory (target: RSS <= 2.5x the raw bytes): a single-node cluster, replication 1, loaded
with ``count`` distinct keys of 12 bytes and distinct values of ``value_size`` bytes in
``mset`` batches; the resident-set growth (``/proc/self/statm``, after ``gc.collect()``)
is compared with ``count * (12 + value_size)``. The same data is then loaded into a
private Redis (when available) for reference.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import statistics
import sys
import time
import timeit
from collections.abc import Coroutine
from typing import Any

from benchlib._load import make_keys, make_value
from benchlib._procs import node_addresses
from benchlib._worker import PREFIX, die_with_parent


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _drive(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that completes without suspending (the local fast path)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("the coroutine suspended: not the local fast path")


async def _wait_ready(stores: list[Any]) -> None:
    """Wait (bounded) for the stores' initial sync, where the store has one."""
    waits = [s.wait_ready(60.0) for s in stores if hasattr(s, "wait_ready")]
    await asyncio.gather(*waits)


def _pct(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _local_get(replication: int, spec: dict[str, Any]) -> dict[str, Any]:
    from peer_ring.core import PeerRingConfig
    from peer_ring.discovery.static import StaticDiscovery
    from peer_ring.kv import KVStore

    nodes = int(spec.get("nodes", 3))
    addresses = node_addresses(nodes, single_ip=False)
    stores = [
        KVStore(
            StaticDiscovery(addresses, self_address=address),
            replication=replication,
            quorum=1,
            config=PeerRingConfig(),
        )
        for address in addresses
    ]
    for store in stores:
        await store.start()
    try:
        await _wait_ready(stores)
        kv = stores[0]
        me = kv.node.address
        value = make_value(int(spec["value_size"]))
        owned = [
            k
            for k in make_keys(int(spec["keys"]))
            if me in kv.node.preference_list(k.encode(), replication)
        ]
        for start in range(0, len(owned), 500):
            batch: dict[str, object] = dict.fromkeys(owned[start : start + 500], value)
            await kv.mset(batch, quorum=replication)
        assert await kv.get(owned[0], quorum=1) == value
        get = kv.get
        count = len(owned)

        # timeit-style: no event loop in the measured path.
        number = int(spec["timeit_number"])
        cursor = [0]

        def one() -> None:
            i = cursor[0]
            cursor[0] = i + 1
            _drive(get(owned[i % count], quorum=1))

        runs = timeit.repeat(one, number=number, repeat=int(spec["timeit_repeat"]))
        per_op = [r / number * 1e6 for r in runs]
        # The harness's own cost (closure call, counter, modulo), to subtract.
        empty = [0]

        def nothing() -> None:
            i = empty[0]
            empty[0] = i + 1
            _ = owned[i % count]

        base = min(timeit.repeat(nothing, number=number, repeat=3)) / number * 1e6

        # await on the running loop, batched.
        batch_size = 100
        batched: list[float] = []
        clock = time.perf_counter_ns
        i = 0
        for _ in range(int(spec["batches"])):
            t0 = clock()
            for _ in range(batch_size):
                await get(owned[i % count], quorum=1)
                i += 1
            batched.append((clock() - t0) / batch_size / 1e3)

        # await on the running loop, each call timed alone.
        overhead = min(
            statistics.median([-(clock() - clock()) for _ in range(2000)]) for _ in range(5)
        )
        calls: list[float] = []
        for n in range(int(spec["calls"])):
            key = owned[n % count]
            t0 = clock()
            await get(key, quorum=1)
            calls.append(max(0, clock() - t0 - overhead) / 1e3)

        # The engine alone.
        engine_get = kv.engine.get
        owned_b = [k.encode() for k in owned]
        ecursor = [0]

        def engine_one() -> None:
            j = ecursor[0]
            ecursor[0] = j + 1
            engine_get(owned_b[j % count])

        engine_runs = timeit.repeat(engine_one, number=number, repeat=int(spec["timeit_repeat"]))
        engine_us = [r / number * 1e6 for r in engine_runs]
        return {
            "replication": replication,
            "nodes": nodes,
            "owned_keys": count,
            "timeit_us": {
                "median": statistics.median(per_op),
                "best": min(per_op),
                "harness_us": base,
                "median_minus_harness": statistics.median(per_op) - base,
            },
            "await_batched_us": {
                "median": statistics.median(batched),
                "p99": _pct(batched, 0.99),
            },
            "await_per_call_us": {
                "median": statistics.median(calls),
                "p99": _pct(calls, 0.99),
                "p999": _pct(calls, 0.999),
                "timer_overhead_ns": overhead,
            },
            "engine_get_us": {"median": statistics.median(engine_us), "best": min(engine_us)},
        }
    finally:
        for store in stores:
            await store.stop()


async def _micro(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "local_get": [await _local_get(r, spec) for r in spec["replications"]],
        "loop": type(asyncio.get_running_loop()).__module__,
    }


async def _memory(spec: dict[str, Any]) -> dict[str, Any]:
    from peer_ring.discovery.static import StaticDiscovery
    from peer_ring.kv import KVStore

    count = int(spec["count"])
    value_size = int(spec["value_size"])
    batch = 1000
    filler = make_value(value_size)
    (address,) = node_addresses(1, single_ip=False)
    async with KVStore(
        StaticDiscovery([address], self_address=address), replication=1, quorum=1
    ) as kv:
        await _wait_ready([kv])
        gc.collect()
        rss0 = _rss_bytes()
        raw = 0
        began = time.perf_counter()
        for start in range(0, count, batch):
            mapping: dict[str, object] = {}
            for i in range(start, min(count, start + batch)):
                key = f"key:{i:08d}"
                # Distinct value objects: the test must not profit from shared bytes.
                value = (b"%08d" % i + filler)[:value_size]
                raw += len(key) + len(value)
                mapping[key] = value
            await kv.mset(mapping)
        load_s = time.perf_counter() - began
        del mapping
        gc.collect()
        rss1 = _rss_bytes()
        stored = len(kv.engine)
        check = await kv.get(f"key:{count - 1:08d}", quorum=1)
        out: dict[str, Any] = {
            "keys": count,
            "stored": stored,
            "value_size": value_size,
            "raw_bytes": raw,
            "rss_before_bytes": rss0,
            "rss_after_bytes": rss1,
            "rss_delta_bytes": rss1 - rss0,
            "ratio": (rss1 - rss0) / raw if raw else 0.0,
            "bytes_per_key": (rss1 - rss0) / count if count else 0.0,
            "engine_accounted_bytes": kv.engine.size_bytes,
            "load_keys_per_s": count / load_s if load_s else 0.0,
            "readback_ok": check is not None and len(check) == value_size,
        }
    if spec.get("redis_port"):
        out["redis"] = _redis_memory(spec, count, value_size, filler)
    return out


def _redis_memory(spec: dict[str, Any], count: int, value_size: int, filler: bytes) -> Any:
    """Load the same keys into the private Redis; its used_memory and RSS growth."""
    import redis

    client = redis.Redis(host=spec["redis_host"], port=int(spec["redis_port"]))
    try:
        client.flushall()
        before = client.info("memory")
        for start in range(0, count, 1000):
            client.mset(
                {
                    f"key:{i:08d}": (b"%08d" % i + filler)[:value_size]
                    for i in range(start, min(count, start + 1000))
                }
            )
        after = client.info("memory")
        keys = client.dbsize()
        client.flushall()
    finally:
        client.close()
    raw = count * (12 + value_size)
    used = int(after["used_memory"]) - int(before["used_memory"])
    rss = int(after["used_memory_rss"]) - int(before["used_memory_rss"])
    return {
        "keys": keys,
        "used_memory_delta_bytes": used,
        "rss_delta_bytes": rss,
        "ratio_used_memory": used / raw if raw else 0.0,
        "ratio_rss": rss / raw if raw else 0.0,
    }


def main() -> None:
    """Entry point: ``python -m benchlib._micro '<spec JSON>'``."""
    die_with_parent()
    spec: dict[str, Any] = json.loads(sys.argv[1])
    from peer_ring.core import run

    coro = _micro(spec) if spec["kind"] == "micro" else _memory(spec)
    result = run(coro, use_uvloop=bool(spec.get("uvloop", True)))
    sys.stdout.write(PREFIX + json.dumps({"event": "result", **result}) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
