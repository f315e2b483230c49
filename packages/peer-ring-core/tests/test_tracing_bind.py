"""While tracing is off, ``PeerRing.execute`` is the coordinator's own ``execute`` (no
layer and no tracing check per operation); a tracer provider configured after start is
still picked up within ``_tracing._CHECK_EVERY`` operations, as the per-call check did.
"""

from __future__ import annotations

import pytest

from peer_ring.core import Command, PeerRing, PeerRingConfig, _tracing
from peer_ring.core.testing import FakeClock, FixedDiscovery, MemoryNetwork

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

pytestmark = pytest.mark.fake_time

A = "a:1"
PUT = Command("put", mutates=True)
CONFIG = PeerRingConfig(partitions=4, replication=1, quorum=1, anti_entropy_interval=None)


def one_node(loop_clock: FakeClock) -> PeerRing:
    net = MemoryNetwork(loop_clock)
    n = PeerRing(
        FixedDiscovery(A, [A]), config=CONFIG, transport=net.transport(A), clock=loop_clock
    )
    n.register("t", PUT, lambda ctx, key, payload: b"ok")
    return n


def traced(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    """From now on a provider is configured (as an application's SDK setup would)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(_tracing, "_tracer", provider.get_tracer("peer_ring.core"))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    return exporter


@pytest.fixture
def untraced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_tracing, "_on", False)
    monkeypatch.setattr(_tracing, "_countdown", 0)
    monkeypatch.setattr(trace, "get_tracer_provider", trace.ProxyTracerProvider)


async def test_untraced_execute_is_the_coordinators_and_keeps_its_signature(
    untraced: None, loop_clock: FakeClock
) -> None:
    async with one_node(loop_clock) as n:
        assert n.execute == n._coord.execute  # bound per instance: no PeerRing.execute call
        result = await n.execute("t", PUT, b"k", b"v", replication=1, quorum=1, timeout=1.0)
        assert result.ok and result.payloads == [b"ok"]
        assert (await n.execute("t", "put", "k")).ok  # payload's default, str key
        with pytest.raises(TypeError):  # replication is keyword-only, as before
            n.execute("t", PUT, b"k", b"v", 1)  # type: ignore[call-arg,unused-coroutine]


async def test_a_provider_set_after_start_is_picked_up_within_the_check_interval(
    untraced: None, monkeypatch: pytest.MonkeyPatch, loop_clock: FakeClock
) -> None:
    async with one_node(loop_clock) as n:
        await n.execute("t", PUT, b"k", b"v")
        spans = traced(monkeypatch)
        ops = 0
        while "execute" in vars(n) and ops <= _tracing._CHECK_EVERY:
            await n.execute("t", PUT, b"k", b"v")
            ops += 1
        # The look happened within the interval (the op that made it is not traced, as a
        # provider set between two per-call checks was not); from now on the class's
        # execute runs, with its span.
        assert "execute" not in vars(n)
        assert ops == _tracing._CHECK_EVERY  # none for CHECK_EVERY ops after start's look
        assert not spans.get_finished_spans()
        await n.execute("t", PUT, b"k", b"v")
        (span,) = spans.get_finished_spans()
        assert span.name == "peer_ring.execute"


async def test_a_provider_set_before_start_traces_the_first_operation(
    untraced: None, monkeypatch: pytest.MonkeyPatch, loop_clock: FakeClock
) -> None:
    n = one_node(loop_clock)
    assert n.execute == n._coord.execute
    spans = traced(monkeypatch)
    async with n:
        assert "execute" not in vars(n)
        await n.execute("t", PUT, b"k", b"v")
        assert [s.name for s in spans.get_finished_spans()] == ["peer_ring.execute"]
