"""``tools/bench ratelimit --trace``: where a forwarded hit's time goes, stage by stage.

Open loops at ``--rates`` (every hit forwarded, at ``--replication`` and 1), as in the
latency runs, with each node process recording per hit (its key: the trace runs use
``--trace-keys`` keys so that a key is rarely hit twice; keys hit twice are left out) when
it passed each stage, on ``time.monotonic_ns()`` (CLOCK_MONOTONIC, one clock for every
process on Linux):

``scheduled``   the open loop's planned start of the hit
``hit_in``      the hit's task called ``RateLimiter.hit`` (late start: loop busy or timer)
``batch_out``   the forwarding node called ``PeerRing.call`` with the batch holding it
``owner_in``    the owner's ``hits`` handler began
``repl_out``    the owner began sending the key's new state to the other replica
``replica_in``  the other replica's ``states`` handler began
``repl_back``   the owner had the replica's acknowledgement
``owner_out``   the owner's answer was ready (the handler returned or its awaitable ended)
``batch_back``  the forwarding node's ``call`` returned
``relay_in``    a relayed hit: its decision arrived at the forwarding node from the key's
                other replica (``relayed``)
``done``        ``RateLimiter.hit`` returned to the hit's task

The report gives, per stage, the time from the previous stage present for that hit (p50 /
p90 / p99 / max), separately for hits whose state went with the owner's answer (one round
trip, "1rtt"), hits whose state the owner replicated first ("2rtt") and hits whose
decision the key's other replica relayed ("relayed", stages ``RELAY_STAGES``); then, over
the slowest 1% of hits, the mean time spent in each stage (where the tail is) and how many
of them overlapped a collector pause or a loop stall in any node process; the
collector's pauses in every node process; the event loops' stalls (a 1 ms sleep waking
more than 2 ms late: the loop was busy, or the process waited for a core); and the time in
the store's ``digest_partition`` (asked for every shared partition by an anti-entropy
round, in one pass of the loop). The package has no tracing code: the bench
wraps a few of its methods in the child processes. Tracing costs microseconds per hit and
stage; its figures locate time, they are not rates.
"""

from __future__ import annotations

import bisect
import json
import time
from pathlib import Path
from typing import Any

STAGES = (
    "scheduled",
    "hit_in",
    "batch_out",
    "owner_in",
    "repl_out",
    "replica_in",
    "repl_back",
    "owner_out",
    "batch_back",
    "relay_in",
    "done",
)
#: A relayed hit's critical path: the owner's answer ("relayed") and the replica's
#: acknowledgement to the owner run beside it.
RELAY_STAGES = (
    "scheduled",
    "hit_in",
    "batch_out",
    "owner_in",
    "repl_out",
    "replica_in",
    "relay_in",
    "done",
)


class HitTrace:
    """Per stage: key -> first time seen (ns), plus the keys seen twice, and GC pauses."""

    def __init__(self) -> None:
        self.stages: dict[str, dict[str, int]] = {s: {} for s in STAGES}
        self.repeated: set[str] = set()
        self.gc: list[tuple[int, int, int]] = []  # (generation, start ns, duration ns)
        self._gc_start = 0
        self.active = False
        # Event-loop stalls: (start ns, how much later than asked a 1 ms sleep woke, ns),
        # only those over 2 ms; and the store's digest_partition calls (anti-entropy).
        self.lags: list[tuple[int, int]] = []
        self.digests: list[int] = [0, 0]  # calls, total ns
        # The keys of this node's open hits_relay batches, by batch id (relay_in).
        self.relay_batches: dict[int, list[bytes]] = {}

    async def watch_loop(self) -> None:
        """Record when a 1 ms sleep of this process's loop wakes more than 2 ms late."""
        import asyncio

        while True:
            t0 = time.monotonic_ns()
            await asyncio.sleep(0.001)
            late = time.monotonic_ns() - t0 - 1_000_000
            if self.active and late > 2_000_000:
                self.lags.append((t0, late))

    def watch_gc(self) -> None:
        """Record this process's garbage-collector pauses."""
        import gc

        def on_gc(phase: str, info: dict[str, int]) -> None:
            now = time.monotonic_ns()
            if phase == "start":
                self._gc_start = now
            else:
                self.gc.append((info["generation"], self._gc_start, now - self._gc_start))

        gc.callbacks.append(on_gc)

    def mark(self, stage: str, keys: Any, now: int | None = None) -> None:
        """Record ``stage`` for each key (str or bytes) in ``keys``."""
        if not self.active:
            return
        now = time.monotonic_ns() if now is None else now
        seen = self.stages[stage]
        for k in keys:
            key = k.decode(errors="replace") if isinstance(k, bytes | bytearray) else k
            if key in seen:
                if stage == "scheduled":
                    self.repeated.add(key)
                continue
            seen[key] = now

    def dump(self, path: Path) -> None:
        doc = {
            "stages": self.stages,
            "repeated": sorted(self.repeated),
            "gc": self.gc,
            "lags": self.lags,
            "digests": self.digests,
        }
        path.write_text(json.dumps(doc))

    def merge_file(self, path: Path) -> None:
        doc = json.loads(path.read_text())
        self.repeated.update(doc["repeated"])
        self.gc.extend(tuple(g) for g in doc["gc"])
        self.lags.extend(tuple(x) for x in doc.get("lags", []))
        for i, v in enumerate(doc.get("digests", [0, 0])):
            self.digests[i] += v
        for stage, records in doc["stages"].items():
            seen = self.stages[stage]
            for k, v in records.items():
                if k in seen and stage == "scheduled":
                    self.repeated.add(k)  # hit by two processes
                seen.setdefault(k, v)


def install(trace: HitTrace) -> None:
    """Wrap the rate limiter's class methods (before any ``RateLimiter`` is made) so that
    every limiter of this process records into ``trace``."""
    from peer_ring.ratelimit import _limiter
    from peer_ring.ratelimit._relay import decode_deliveries, decode_relay_hits, decode_states_relay
    from peer_ring.ratelimit._wire import decode_entry, decode_hits, unpack_records

    cls: Any = _limiter.RateLimiter
    on_hits, on_hits_relay = cls._on_hits, cls._on_hits_relay
    on_states, on_states_relay = cls._on_states, cls._on_states_relay
    on_relayed = cls._on_relayed
    # The replicators call the module's send_states at call time: wrapping the module
    # attribute covers both the plain and the relayed replication message.
    limiter_module: Any = _limiter
    send_states = limiter_module.send_states

    def owner_side(keys: list[bytes], out: Any) -> Any:
        if isinstance(out, bytes):
            trace.mark("owner_out", keys)
            return out

        async def after() -> bytes:
            res: bytes = await out
            trace.mark("owner_out", keys)
            return res

        return after()

    def traced_on_hits(self: Any, ctx: Any, key: bytes, payload: bytes) -> Any:
        keys = [k for k, _ in decode_hits(payload)]
        trace.mark("owner_in", keys)
        return owner_side(keys, on_hits(self, ctx, key, payload))

    def traced_on_hits_relay(self: Any, ctx: Any, key: bytes, payload: bytes) -> Any:
        keys = [k for k, _ in decode_hits(decode_relay_hits(payload)[1])]
        trace.mark("owner_in", keys)
        return owner_side(keys, on_hits_relay(self, ctx, key, payload))

    def traced_on_states(self: Any, ctx: Any, key: bytes, payload: bytes) -> Any:
        trace.mark("replica_in", [decode_entry(r, 0.0)[0] for r in unpack_records(payload)])
        return on_states(self, ctx, key, payload)

    def traced_on_states_relay(self: Any, ctx: Any, key: bytes, payload: bytes) -> Any:
        states, _ = decode_states_relay(payload)
        trace.mark("replica_in", [decode_entry(r, 0.0)[0] for r in states])
        return on_states_relay(self, ctx, key, payload)

    async def traced_send_states(rl: Any, replica: str, keys: Any, relays: Any) -> None:
        # ``keys``: a list of keys (older releases) or a mapping key -> partition, passed
        # on as it came.
        listed = list(keys)
        trace.mark("repl_out", listed)
        await send_states(rl, replica, keys, relays)
        trace.mark("repl_back", listed)

    def traced_on_relayed(self: Any, ctx: Any, key: bytes, payload: bytes) -> Any:
        keys = []
        for batch_id, index, _ in decode_deliveries(payload):
            batch = trace.relay_batches.get(batch_id)
            if batch is not None and index < len(batch):
                keys.append(batch[index])
        trace.mark("relay_in", keys)
        return on_relayed(self, ctx, key, payload)

    cls._on_relayed = traced_on_relayed
    cls._on_hits, cls._on_hits_relay = traced_on_hits, traced_on_hits_relay
    cls._on_states, cls._on_states_relay = traced_on_states, traced_on_states_relay
    limiter_module.send_states = traced_send_states

    from peer_ring.ratelimit._store import StateStore

    store_cls: Any = StateStore
    digest = store_cls.digest_partition

    def traced_digest(self: Any, partition: int) -> Any:
        t0 = time.monotonic_ns()
        out = digest(self, partition)
        if trace.active:
            trace.digests[0] += 1
            trace.digests[1] += time.monotonic_ns() - t0
        return out

    store_cls.digest_partition = traced_digest


def install_node(rl: Any, trace: HitTrace) -> None:
    """Wrap this limiter's node's ``call`` (the forwarded batches leave through it)."""
    from peer_ring.ratelimit._relay import decode_relay_hits
    from peer_ring.ratelimit._wire import decode_hits

    node = rl.node
    call = node.call

    async def traced_call(
        address: str, ns: str, command: Any, key: bytes, payload: bytes, **kw: Any
    ) -> bytes:
        if command.name == "hits":
            hits = payload
        elif command.name == "hits_relay":  # batch_back: the owner's answer, not the relay's
            batch_id, hits = decode_relay_hits(payload)
        else:
            return await call(address, ns, command, key, payload, **kw)  # type: ignore[no-any-return]
        keys = [k for k, _ in decode_hits(hits)]
        trace.mark("batch_out", keys)
        if command.name == "hits_relay":
            trace.relay_batches[batch_id] = keys
        out: bytes = await call(address, ns, command, key, payload, **kw)
        trace.mark("batch_back", keys)
        return out

    node.call = traced_call


def _pct(values: list[int], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] / 1e6


def _row(values: list[int]) -> dict[str, float]:
    return {
        "p50": round(_pct(values, 0.5), 3),
        "p90": round(_pct(values, 0.9), 3),
        "p99": round(_pct(values, 0.99), 3),
        "max": round(max(values) / 1e6, 3),
        "n": len(values),
    }


def _overlaps(spans: list[tuple[int, int]], start: int, end: int) -> bool:
    """Whether any ``(begin, finish)`` of the sorted ``spans`` overlaps ``[start, end]``."""
    i = bisect.bisect_right(spans, (end, end))
    return any(b >= start for _, b in spans[max(0, i - 64) : i])


def breakdown(trace: HitTrace) -> dict[str, Any]:
    """Per path (1rtt / 2rtt): per stage p50/p90/p99/max (ms), and the slowest 1%'s mean
    per stage; GC pauses of all node processes over the measured hits."""
    st = trace.stages
    out: dict[str, Any] = {}
    pauses = sorted((t, t + d) for _, t, d in trace.gc)
    stalls = sorted((t, t + 1_000_000 + late) for t, late in trace.lags)
    for path in ("1rtt", "2rtt", "relayed"):
        stages = RELAY_STAGES if path == "relayed" else STAGES
        segs: dict[str, list[int]] = {}
        per_hit: list[tuple[int, dict[str, int], int, int]] = []
        for key, t_end in st["done"].items():
            if key in trace.repeated or key not in st["scheduled"]:
                continue
            if key in st["relay_in"]:
                kind = "relayed"
            else:
                kind = "2rtt" if key in st["repl_out"] else "1rtt"
            if kind != path:
                continue
            t0 = st["scheduled"][key]
            prev_name, prev = "scheduled", t0
            mine: dict[str, int] = {}
            for stage in stages[1:]:
                t = st[stage].get(key)
                # Not on this hit's path, or after it ended (the replica's acknowledgement
                # of a relayed hit's state can reach the owner after the hit is done).
                if t is None or t > t_end or t < t0:
                    continue
                name = f"{prev_name}->{stage}"
                segs.setdefault(name, []).append(t - prev)
                mine[name] = t - prev
                prev_name, prev = stage, t
            per_hit.append((t_end - t0, mine, t0, t_end))
        if not per_hit:
            continue
        rows: dict[str, Any] = {name: _row(v) for name, v in segs.items()}
        rows["end-to-end"] = _row([e for e, *_ in per_hit])
        per_hit.sort(key=lambda x: x[0])
        tail = per_hit[int(0.99 * len(per_hit)) :]
        rows["slowest 1% (mean ms per stage)"] = {
            name: round(sum(m.get(name, 0) for _, m, *_ in tail) / len(tail) / 1e6, 3)
            for name in segs
        }
        rows["slowest 1% overlapping"] = {
            "hits": len(tail),
            "gc": sum(_overlaps(pauses, a, b) for *_, a, b in tail),
            "stall": sum(_overlaps(stalls, a, b) for *_, a, b in tail),
            "either": sum(_overlaps(pauses, a, b) or _overlaps(stalls, a, b) for *_, a, b in tail),
        }
        out[path] = rows
    lags = [late for _, late in trace.lags]
    out["loop"] = {
        "stalls_over_2ms": len(lags),
        "stalls_over_10ms": sum(x > 10_000_000 for x in lags),
        "max_stall_ms": round(max(lags, default=0) / 1e6, 3),
        "digest_partition_calls": trace.digests[0],
        "digest_partition_ms": round(trace.digests[1] / 1e6, 1),
    }
    starts = [st["scheduled"][k] for k in st["done"] if k in st["scheduled"]]
    if starts and trace.gc:
        lo, hi = min(starts), max(st["done"].values())
        for gen in (0, 1, 2):
            lengths = [d for g, t, d in trace.gc if g == gen and lo <= t <= hi]
            if lengths:
                out.setdefault("gc", {})[f"gen{gen}"] = {
                    "count": len(lengths),
                    "max_ms": round(max(lengths) / 1e6, 3),
                    "total_ms": round(sum(lengths) / 1e6, 1),
                }
    return out


def table(name: str, result: dict[str, Any]) -> str:
    """The breakdown as text."""
    lines = [name]
    for path, rows in result.items():
        if path == "loop":
            lines.append(
                f"  event loops (all node processes): {rows['stalls_over_2ms']} stalls over 2 ms,"
                f" {rows['stalls_over_10ms']} over 10 ms, max {rows['max_stall_ms']} ms;"
                f" digest_partition: {rows['digest_partition_calls']} calls,"
                f" {rows['digest_partition_ms']} ms"
            )
            continue
        if path == "gc":
            for gen, g in rows.items():
                lines.append(
                    f"  gc {gen} (all node processes): {g['count']} pauses, max {g['max_ms']}"
                    f" ms, total {g['total_ms']} ms"
                )
            continue
        lines.append(f"  {path}: ms{'':<22} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>8} {'n':>6}")
        tail = rows.pop("slowest 1% (mean ms per stage)")
        over = rows.pop("slowest 1% overlapping")
        for seg, r in rows.items():
            lines.append(
                f"    {seg:<26} {r['p50']:>7.3f} {r['p90']:>7.3f} {r['p99']:>7.3f}"
                f" {r['max']:>8.3f} {r['n']:>6}"
            )
        lines.append(
            "    slowest 1%, mean per stage: " + ", ".join(f"{k} {v:.2f}" for k, v in tail.items())
        )
        lines.append(
            f"    slowest 1%: {over['hits']} hits, {over['gc']} overlapped a collector pause,"
            f" {over['stall']} a loop stall over 2 ms, {over['either']} either (any node process)"
        )
        rows["slowest 1% (mean ms per stage)"] = tail
        rows["slowest 1% overlapping"] = over
    return "\n".join(lines)
