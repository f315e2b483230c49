"""Tracing spans in this process, including a transfer that breaks.

``test_tracing.py`` runs whole traced clusters in subprocesses (the global tracer provider
can be set once per process). Here the module's tracer is swapped for one of a local SDK
provider for the duration of a test, without touching the global provider, so the span
contents can be checked against what actually happened, including the error path of a
transfer whose source goes away mid-stream.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

from peer_ring.core import (
    DIGEST_BUCKETS,
    Command,
    PeerRing,
    PeerRingConfig,
    PeerUnavailableError,
    QuorumNotReachedError,
    _tracing,
)
from peer_ring.core.testing import FakeClock, FixedDiscovery, MemoryNetwork

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

pytestmark = pytest.mark.fake_time

A, B, C = "a:1", "b:1", "c:1"
PUT = Command("put", mutates=True)
CONFIG = PeerRingConfig(partitions=4, replication=2, quorum=2, anti_entropy_interval=None)


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(_tracing, "_tracer", provider.get_tracer("peer_ring.core"))
    monkeypatch.setattr(_tracing, "_on", True)
    return exporter


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


class Records:
    def __init__(self, net: MemoryNetwork, cut_after: int | None = None) -> None:
        self.net, self.cut_after = net, cut_after

    def export_partition(self, partition: int, buckets: object = None) -> Iterator[bytes]:
        for i in range(3):
            if self.cut_after is not None and i == self.cut_after:
                self.net.cut(A, B)  # the source becomes unreachable mid-stream
            yield b"record-%d" % i

    def apply_records(self, partition: int, records: Sequence[bytes]) -> None:
        return None

    def drop_partition(self, partition: int) -> None:
        return None

    def digest_partition(self, partition: int) -> Sequence[bytes]:
        return [b""] * DIGEST_BUCKETS


def node(net: MemoryNetwork, clock: FakeClock, address: str, peers: list[str]) -> PeerRing:
    n = PeerRing(
        FixedDiscovery(address, peers), config=CONFIG, transport=net.transport(address), clock=clock
    )
    n.register("t", PUT, lambda ctx, key, payload: b"ok")
    return n


async def test_execute_and_execute_many_spans_carry_the_outcome(
    spans: InMemorySpanExporter, loop_clock: FakeClock
) -> None:
    net = MemoryNetwork(loop_clock)
    a, b = node(net, loop_clock, A, [A, B]), node(net, loop_clock, B, [A, B])
    async with a, b:
        result = await a.execute("t", PUT, b"k", b"v")
        (span,) = named(spans, "peer_ring.execute")
        assert dict(span.attributes or {}) == {
            "peer_ring.namespace": "t",
            "peer_ring.command": "put",
            "peer_ring.partition": result.partition,
            "peer_ring.replicas": 2,
        }
        await b.stop()
        results = await a.execute_many("t", PUT, [(b"k%d" % i, b"v") for i in range(5)])
        (many,) = named(spans, "peer_ring.execute_many")
        assert many.attributes is not None
        assert many.attributes["peer_ring.keys"] == 5
        assert many.attributes["peer_ring.failed_keys"] == sum(not r.ok for r in results) == 5
        with pytest.raises(QuorumNotReachedError):
            await a.execute("t", "put", b"k", b"v")
        failed = named(spans, "peer_ring.execute")[-1]
        assert failed.status.status_code is trace.StatusCode.ERROR
        assert [e.name for e in failed.events] == ["exception"]


async def test_a_transfer_span_counts_what_arrived_and_records_a_break(
    spans: InMemorySpanExporter, loop_clock: FakeClock
) -> None:
    net = MemoryNetwork(loop_clock)
    hooks = Records(net)
    a, b = node(net, loop_clock, A, [A]), node(net, loop_clock, B, [B])
    a.register_hooks("t", hooks)
    async with a, b:
        assert [r async for chunk in b.transfer(A, "t", 1) for r in chunk] == [
            b"record-0",
            b"record-1",
            b"record-2",
        ]
        (ok,) = named(spans, "peer_ring.transfer")
        assert ok.status.status_code is not trace.StatusCode.ERROR
        assert dict(ok.attributes or {}) == {
            "peer_ring.peer": A,
            "peer_ring.namespace": "t",
            "peer_ring.partition": 1,
            "peer_ring.records": 3,
            "peer_ring.bytes": 24,
        }
        hooks.cut_after = 1
        with pytest.raises(PeerUnavailableError):
            async for _ in b.transfer(A, "t", 2):
                pass
        broken = named(spans, "peer_ring.transfer")[-1]
        assert broken.status.status_code is trace.StatusCode.ERROR
        assert [e.name for e in broken.events] == ["exception"]
        assert broken.attributes is not None and broken.attributes["peer_ring.records"] == 0


def test_a_provider_is_looked_up_once_per_check_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    lookups = 0

    def proxy() -> trace.ProxyTracerProvider:
        nonlocal lookups
        lookups += 1
        return trace.ProxyTracerProvider()

    monkeypatch.setattr(_tracing, "_on", False)
    monkeypatch.setattr(_tracing, "_countdown", 0)
    monkeypatch.setattr(trace, "get_tracer_provider", proxy)
    assert not any(_tracing.enabled() for _ in range(_tracing._CHECK_EVERY + 1))
    assert lookups == 1  # the first call, then none for _CHECK_EVERY calls
    assert not _tracing.enabled()
    assert lookups == 2
    monkeypatch.setattr(trace, "get_tracer_provider", TracerProvider)
    monkeypatch.setattr(_tracing, "_countdown", 0)
    assert _tracing.enabled() and _tracing.enabled()  # a real provider: on, and it stays
