"""``tools/bench pubsub --trace``: where one message's end-to-end time goes, stage by stage.

Every message's payload starts with its send time (``perf_counter_ns``, a system-wide
monotonic clock on Linux, so times taken in different processes compare). Tracing wraps a
few methods of each node's pub-sub objects (per instance; the package has no tracing code)
and records, per message, when it passed each stage:

``published``   the publisher called ``publish`` (the payload's stamp)
``pub_out``     the publisher's node encoded it into a PUBLISH_MANY (remote sequencer only)
``seq_in``      the sequencer's ``Leaders.publish`` received it
``append_out``  the sequencer started replicating the APPEND batch holding it
``committed``   W replicas held that batch (the commit point passed it)
``claimed``     a group fetch claimed it (delivery record made, replication queued; before
                ``committed`` when the record rides on the APPEND or replicates alongside it)
``fetch_out``   the delivery record was on W replicas: the fetch returns it
``delivered``   the consumer's ``async for`` received it

The report gives, per stage, the time from the previous stage present for that message
(p50 / p90 / p99 / max over messages), separately for partitions sequenced by the
publishing node ("local") and by another node ("remote"). Tracing costs a few
microseconds per message and stage; its figures are for finding where time goes, not for
rates.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

STAGES = (
    "published",
    "pub_out",
    "seq_in",
    "append_out",
    "committed",
    "claimed",
    "fetch_out",
    "delivered",
)


class Trace:
    """Per stage: message id (the payload's 8-byte stamp) -> first time seen (ns)."""

    def __init__(self, prefix: bytes = b"") -> None:
        self.prefix = prefix  # ring keys traced (b"" = every topic)
        self.stages: dict[str, dict[bytes, int]] = {s: {} for s in STAGES}
        # (generation, start ns, wall ns, CPU ns): CPU time is what the collection itself
        # cost, whatever the scheduler did meanwhile on a loaded machine.
        self.gc: list[tuple[int, int, int, int]] = []
        self.gc_sizes: list[int] = []  # tracked objects after each full collection
        self._gc_start = self._gc_cpu = 0

    def watch_gc(self) -> None:
        """Record this process's garbage-collector pauses."""
        import gc

        def on_gc(phase: str, info: dict[str, int]) -> None:
            now = time.perf_counter_ns()
            cpu = time.process_time_ns()
            if phase == "start":
                self._gc_start, self._gc_cpu = now, cpu
            else:
                gen = info["generation"]
                self.gc.append((gen, self._gc_start, now - self._gc_start, cpu - self._gc_cpu))
                if gen == 2:  # what a full collection had to walk
                    self.gc_sizes.append(len(gc.get_objects()))

        gc.callbacks.append(on_gc)

    def mark(self, stage: str, datas: Any, now: int | None = None) -> None:
        """Record ``stage`` for each payload in ``datas`` (first time only)."""
        now = time.perf_counter_ns() if now is None else now
        seen = self.stages[stage]
        for data in datas:
            seen.setdefault(data[:8], now)

    def dump(self, path: Path) -> None:
        """Write the records as JSON (ids as hex)."""
        doc: dict[str, Any] = {
            s: {k.hex(): v for k, v in d.items()} for s, d in self.stages.items()
        }
        doc["gc"] = self.gc
        doc["gc_sizes"] = self.gc_sizes
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(path)

    def merge_file(self, path: Path) -> None:
        """Add the records of a file written by :meth:`dump`."""
        doc = json.loads(path.read_text())
        self.gc.extend(tuple(g) for g in doc.pop("gc", []))
        self.gc_sizes.extend(doc.pop("gc_sizes", []))
        for stage, records in doc.items():
            seen = self.stages[stage]
            for k, v in records.items():
                seen.setdefault(bytes.fromhex(k), v)


def install(ps: Any, trace: Trace) -> None:
    """Wrap the pub-sub objects of one node (``PubSub``) so they record into ``trace``."""
    from peer_ring.pubsub import _client

    leaders, service = ps.leaders, ps.service
    prefix = trace.prefix

    def traced(key: bytes) -> bool:
        return key.startswith(prefix)

    publish = leaders.publish

    async def traced_publish(key: bytes, config: Any, messages: Any) -> Any:
        if traced(key):
            trace.mark("seq_in", [m.data for m in messages])
        return await publish(key, config, messages)

    leaders.publish = traced_publish

    def entries_of(batch: Any) -> list[bytes]:
        return [e.data for leader, slot in batch if traced(leader.key) for e, _ in slot.batch]

    send_batch = getattr(leaders, "_send_batch", None)  # a turn's APPEND sections (_outbox)
    if send_batch is not None:

        async def traced_send_batch(batch: Any, items: Any) -> None:
            datas = entries_of(batch)
            trace.mark("append_out", datas)
            await send_batch(batch, items)
            trace.mark("committed", datas)

        leaders._send_batch = traced_send_batch
    else:  # older package sources
        send_many = leaders._send_many

        async def traced_send_many(batch: Any) -> None:
            datas = entries_of(batch)
            trace.mark("append_out", datas)
            await send_many(batch)
            trace.mark("committed", datas)

        leaders._send_many = traced_send_many

    send = leaders._send

    async def traced_send(leader: Any, slot: Any) -> None:
        datas = [e.data for e, _ in slot.batch] if traced(leader.key) else []
        trace.mark("append_out", datas)
        await send(leader, slot)
        trace.mark("committed", datas)

    leaders._send = traced_send

    claim_begin = service._claim_begin

    def traced_claim_begin(leader: Any, req: Any, *more: Any) -> Any:
        reply, wait = claim_begin(leader, req, *more)  # (newer sources: the requester too)
        if traced(leader.key):
            trace.mark("claimed", [e.data for e in reply.entries])
        return reply, wait

    service._claim_begin = traced_claim_begin

    piggyback: Any = getattr(leaders, "piggyback", None)  # older package sources: none

    def traced_piggyback(leader: Any, slot: Any) -> None:
        piggyback(leader, slot)
        if traced(leader.key):
            for park in leader.parked:
                if park.reply is not None and park.committed is slot.committed:
                    trace.mark("claimed", [e.data for e in park.reply.entries])

    if piggyback is not None:
        leaders.piggyback = traced_piggyback

    fetch_pass = service._fetch_pass

    async def traced_fetch_pass(sections: Any, *more: Any) -> Any:
        outcomes = await fetch_pass(sections, *more)
        now = time.perf_counter_ns()
        for (key, _), out in zip(sections, outcomes, strict=True):
            if traced(key) and not isinstance(out, BaseException):
                trace.mark("fetch_out", [e.data for e in out.entries], now)
        return outcomes

    service._fetch_pass = traced_fetch_pass

    fetch = service.fetch

    async def traced_fetch(key: bytes, req: Any, *more: Any) -> Any:
        reply = await fetch(key, req, *more)
        if traced(key):
            trace.mark("fetch_out", [e.data for e in reply.entries])
        return reply

    service.fetch = traced_fetch

    client_module: Any = _client  # patched by name: the function it imported
    if not getattr(client_module, "_traced", False):  # module-wide: once per process
        encode = client_module.encode_publish_many

        def traced_encode(sections: Any) -> bytes:
            trace.mark("pub_out", [m.data for key, _, ms in sections if traced(key) for m in ms])
            return encode(sections)  # type: ignore[no-any-return]

        client_module.encode_publish_many = traced_encode
        client_module._traced = True


def _pct(values: list[int], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] / 1e6


def breakdown(trace: Trace) -> dict[str, Any]:
    """Per stage and kind (local / remote sequencer): p50, p90, p99, max in ms."""
    st = trace.stages
    out: dict[str, Any] = {}
    for kind in ("local", "remote"):
        segs: dict[str, list[int]] = {}
        e2e: list[int] = []
        for mid, t_end in st["delivered"].items():
            remote = mid in st["pub_out"]
            if remote != (kind == "remote"):
                continue
            t0 = int.from_bytes(mid, "big")
            prev_name, prev = "published", t0
            # In time order: a claim may come before the commit (the delivery record rides
            # on the APPEND, or replicates alongside the APPEND in flight).
            present = [(st[s_][mid], i, s_) for i, s_ in enumerate(STAGES[1:]) if mid in st[s_]]
            for t, _, stage in sorted(present):
                segs.setdefault(f"{prev_name}->{stage}", []).append(t - prev)
                prev_name, prev = stage, t
            e2e.append(t_end - t0)
        if not e2e:
            continue
        rows = {
            name: {
                "p50": round(_pct(v, 0.5), 3),
                "p90": round(_pct(v, 0.9), 3),
                "p99": round(_pct(v, 0.99), 3),
                "max": round(max(v) / 1e6, 3),
                "n": len(v),
            }
            for name, v in segs.items()
        }
        rows["end-to-end"] = {
            "p50": round(_pct(e2e, 0.5), 3),
            "p90": round(_pct(e2e, 0.9), 3),
            "p99": round(_pct(e2e, 0.99), 3),
            "max": round(max(e2e) / 1e6, 3),
            "n": len(e2e),
        }
        out[kind] = rows
    starts = [int.from_bytes(m, "big") for m in st["delivered"]]
    if starts and trace.gc:
        lo, hi = min(starts), max(st["delivered"].values())
        for gen in (0, 1, 2):
            pauses = [(d, c) for g, t, d, c in trace.gc if g == gen and lo <= t <= hi]
            if pauses:
                out.setdefault("gc", {})[f"gen{gen}"] = {
                    "count": len(pauses),
                    "max_ms": round(max(d for d, _ in pauses) / 1e6, 3),
                    "total_ms": round(sum(d for d, _ in pauses) / 1e6, 1),
                    "max_cpu_ms": round(max(c for _, c in pauses) / 1e6, 3),
                    "total_cpu_ms": round(sum(c for _, c in pauses) / 1e6, 1),
                }
        if trace.gc_sizes:
            out.setdefault("gc", {})["tracked"] = {"max_objects": max(trace.gc_sizes)}
    return out


def table(result: dict[str, Any]) -> str:
    """The breakdown as text."""
    lines = []
    for kind, rows in result.items():
        if kind == "gc":
            for gen, g in rows.items():
                if gen == "tracked":
                    lines.append(f"gc: up to {g['max_objects']} tracked objects after a full pass")
                    continue
                lines.append(
                    f"gc {gen} (all processes): {g['count']} pauses, max {g['max_ms']} ms, "
                    f"total {g['total_ms']} ms (CPU: max {g['max_cpu_ms']}, "
                    f"total {g['total_cpu_ms']} ms)"
                )
            continue
        lines.append(f"{kind} sequencer: ms  {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8} {'n':>7}")
        for name, r in rows.items():
            lines.append(
                f"  {name:<24} {r['p50']:>8.3f} {r['p90']:>8.3f} {r['p99']:>8.3f} "
                f"{r['max']:>8.3f} {r['n']:>7}"
            )
    return "\n".join(lines)


async def run_in_process(
    nodes: int, partitions: int, rate: float, duration: float, transport: str, size: int
) -> dict[str, Any]:
    """N nodes in this process on the real transport, publishing at ``rate`` from node 0
    for ``duration`` seconds with one group member on node 0; the stage breakdown."""
    from benchlib.pubsub_inproc import make_cluster, start_cluster

    cluster, _, _ = make_cluster(nodes, transport)
    trace = Trace(b"trace/")
    for ps in cluster:
        install(ps, trace)
    try:
        topic = await start_cluster(cluster, "trace", partitions)
        sub = topic.subscribe(group="g", max_in_flight=2048, start="latest")
        measuring = False

        async def consume() -> None:
            async for msg in sub:
                if measuring:
                    trace.mark("delivered", [msg.data])
                msg.ack_nowait()

        async with sub:
            consumer = asyncio.ensure_future(consume())
            await asyncio.sleep(0.5)
            inflight: set[asyncio.Future[Any]] = set()
            start = time.monotonic()
            sent = 0
            while (now := time.monotonic()) < start + 1.0 + duration:
                if not measuring and now >= start + 1.0:  # one second of warm-up
                    measuring = True
                    for records in trace.stages.values():
                        records.clear()
                due = int((now - start) * rate)
                while sent < due:
                    data = time.perf_counter_ns().to_bytes(8, "big") + b"x" * max(0, size - 8)
                    task = asyncio.ensure_future(topic.publish(data))
                    inflight.add(task)
                    task.add_done_callback(inflight.discard)
                    sent += 1
                await asyncio.sleep(0.001)
            await asyncio.gather(*inflight)
            await asyncio.sleep(0.5)
            measuring = False
            consumer.cancel()
        return breakdown(trace)
    finally:
        for ps in cluster:
            await ps.stop()
