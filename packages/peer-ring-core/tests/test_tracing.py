"""OpenTelemetry spans of the core (execute, execute_many, partition transfers).

The tracer provider is process-global and can be set only once, so each traced scenario
runs in its own Python process with the SDK's in-memory exporter; the spans come back as
JSON on stdout.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from peer_ring.core import Command, PeerRing, PeerRingConfig
from peer_ring.core.testing import FixedDiscovery, MemoryNetwork

pytest.importorskip("opentelemetry.sdk")

# Shared by the scenarios: a 3-node in-memory cluster whose app keeps a dict with hooks;
# a fourth node joins and pulls its partitions (transfers).
CLUSTER = textwrap.dedent(
    """
    import asyncio, json, sys
    from peer_ring.core import (DIGEST_BUCKETS, Command, PeerRing, PeerRingConfig,
        QuorumNotReachedError, bucket_for_key, partition_for_key)
    from peer_ring.core.testing import FixedDiscovery, MemoryNetwork

    P = 16
    PUT = Command("put", mutates=True)
    UNSAFE = Command("unsafe", mutates=True, hinted=False)

    class Store:
        def __init__(self):
            self.data = {}
        def put(self, ctx, key, payload):
            self.data[key] = payload
            return b""
        def export_partition(self, partition, buckets=None):
            for k, v in list(self.data.items()):
                if partition_for_key(k, P) == partition:
                    yield len(k).to_bytes(2, "big") + k + v
        def apply_records(self, partition, records):
            for r in records:
                n = int.from_bytes(r[:2], "big")
                self.data[r[2:2 + n]] = r[2 + n:]
        def drop_partition(self, partition):
            for k in [k for k in self.data if partition_for_key(k, P) == partition]:
                del self.data[k]
        def digest_partition(self, partition):
            d = [b""] * DIGEST_BUCKETS
            for k in self.data:
                if partition_for_key(k, P) == partition:
                    d[bucket_for_key(k)] = b"x"
            return d

    async def scenario():
        net = MemoryNetwork()
        addrs = ["a:1", "b:1", "c:1", "d:1"]
        config = PeerRingConfig(partitions=P, replication=2, anti_entropy_interval=None,
                                handoff_delay=0.1)
        discoveries, nodes = {}, []
        async def start(address, peers):
            discoveries[address] = FixedDiscovery(address, peers)
            node = PeerRing(discoveries[address], config=config,
                            transport=net.transport(address))
            store = Store()
            node.register("t", PUT, store.put)
            node.register("t", UNSAFE, store.put)
            node.register_hooks("t", store)
            await node.start()
            nodes.append(node)
            return node
        for address in addrs[:3]:
            await start(address, addrs[:3])
        await asyncio.gather(*(n.wait_ready(10) for n in nodes))
        a = nodes[0]
        await a.execute("t", PUT, b"one", b"1")
        await a.execute_many("t", PUT, [(b"k%d" % i, b"v") for i in range(20)])
        try:
            await a.execute("t", PUT, b"x", b"v", replication=5, quorum=5)
        except QuorumNotReachedError:
            pass
        for d in discoveries.values():
            d.set_members(addrs)
        joiner = await start(addrs[3], addrs)
        await joiner.wait_ready(10)
        for n in nodes:
            await n.stop()
    """
)

TRACED = CLUSTER + textwrap.dedent(
    """
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    asyncio.run(scenario())
    print(json.dumps([
        {"name": s.name, "attributes": dict(s.attributes), "status": s.status.status_code.name,
         "events": [e.name for e in s.events]}
        for s in exporter.get_finished_spans()
    ]))
    """
)


def run(script: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_spans_around_execute_execute_many_and_transfers() -> None:
    spans = json.loads(run(TRACED).strip().splitlines()[-1])
    by_name: dict[str, list[dict[str, object]]] = {}
    for span in spans:
        by_name.setdefault(str(span["name"]), []).append(span)
    executes = by_name["peer_ring.execute"]
    ok = [s for s in executes if s["status"] != "ERROR"]
    failed = [s for s in executes if s["status"] == "ERROR"]
    assert len(ok) == 1 and len(failed) == 1
    assert ok[0]["attributes"] == {
        "peer_ring.namespace": "t",
        "peer_ring.command": "put",
        "peer_ring.partition": ok[0]["attributes"]["peer_ring.partition"],  # type: ignore[index]
        "peer_ring.replicas": 2,
    }
    assert failed[0]["events"] == ["exception"]  # the QuorumNotReachedError is recorded
    (many,) = by_name["peer_ring.execute_many"]
    assert many["attributes"]["peer_ring.keys"] == 20  # type: ignore[index]
    assert many["attributes"]["peer_ring.failed_keys"] == 0  # type: ignore[index]
    transfers = by_name["peer_ring.transfer"]
    assert transfers, "the joiner's pulls are traced"
    moved = sum(int(s["attributes"]["peer_ring.records"]) for s in transfers)  # type: ignore[index]
    assert moved > 0
    assert all(s["attributes"]["peer_ring.namespace"] == "t" for s in transfers)  # type: ignore[index]


def test_without_the_opentelemetry_api_nothing_is_traced_and_everything_runs() -> None:
    # None in sys.modules makes `import opentelemetry` raise ImportError.
    script = (
        "import sys\nsys.modules['opentelemetry'] = None\n"
        + CLUSTER
        + "from peer_ring.core import _tracing\nassert not _tracing.enabled()\n"
        + "asyncio.run(scenario())\nprint('done')\n"
    )
    assert run(script).strip().endswith("done")


async def test_without_a_tracer_provider_execute_hands_out_the_coordinator_coroutine() -> None:
    # No SDK provider in this process (the API's default proxy): no wrapper coroutine.
    node = PeerRing(
        FixedDiscovery("a:1", ["a:1"]),
        config=PeerRingConfig(partitions=8, replication=1),
        transport=MemoryNetwork().transport("a:1"),
    )
    put = Command("put", mutates=True)
    node.register("t", put, lambda ctx, key, payload: b"")
    await node.start()
    try:
        coro = node.execute("t", put, b"k", b"v")
        assert coro.__qualname__ == "Coordinator.execute"
        assert (await coro).ok
    finally:
        await node.stop()
