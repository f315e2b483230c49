"""Clock offsets to peers: every probe answer carries the peer's wall clock (NTP style).

Nodes on the in-memory network with skewed wall clocks (``sim.SkewedClock``) and a
one-way latency: each node's estimate of each peer's offset is the skew difference within
the round trip; past half ``max_clock_offset`` a warning is logged once a minute per peer;
an older peer whose probe answer has no wall clock is still probed fine (no estimate).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from peer_ring.core import PeerRing, PeerRingConfig
from peer_ring.core._sync._clock_offsets import ClockOffsets
from peer_ring.core._sync._wire import decode_ping_wall, encode_ping
from peer_ring.core._types import Request, Response, Status
from peer_ring.core.metrics import PeerRingCollector
from peer_ring.core.testing import FakeClock, FixedDiscovery, MemoryNetwork, free_port
from peer_ring.core.testing.sim import SkewedClock
from peer_ring.core.transport import GrpcTransport

LATENCY = 0.01  # one way: a round trip is 0.02 s of fake time
SKEWS = {"127.0.0.1:7101": 0.0, "127.0.0.2:7101": 0.3, "127.0.0.3:7101": -0.1}
CONFIG = PeerRingConfig(
    partitions=16,
    replication=2,
    request_timeout=1.0,
    probe_interval=1.0,
    probe_timeout=0.5,
    max_clock_offset=0.5,
    anti_entropy_interval=None,
)
LOGGER = "peer_ring.core._sync._clock_offsets"
# Wall times near 1.7e9 s carry ~2.4e-7 s of float64 resolution.
FLOAT_SLACK = 1e-6


@pytest.fixture
def base() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def cluster(base: FakeClock) -> AsyncIterator[dict[str, PeerRing]]:
    network = MemoryNetwork(base, latency=LATENCY)
    peers = list(SKEWS)
    nodes = {
        a: PeerRing(
            FixedDiscovery(a, peers),
            config=CONFIG,
            transport=network.transport(a),
            clock=SkewedClock(base, skew=SKEWS[a]),
        )
        for a in peers
    }
    for node in nodes.values():
        await node.start()
    try:
        yield nodes
    finally:
        for node in nodes.values():
            await node.stop()


async def run_for(base: FakeClock, seconds: float, step: float = 0.005) -> None:
    """Advance the fake time in steps small enough for every message hop to happen."""
    for _ in range(round(seconds / step)):
        await base.advance_async(step, settle=5)


async def test_offsets_match_the_skew_within_the_round_trip(
    base: FakeClock, cluster: dict[str, PeerRing]
) -> None:
    await run_for(base, 3.0)
    for me, node in cluster.items():
        clock = node.sync_status()["clock"]
        others = [p for p in SKEWS if p != me]
        assert sorted(clock["offsets"]) == others
        for peer in others:
            expected = SKEWS[peer] - SKEWS[me]
            rtt = clock["rtt"][peer]
            assert 0 < rtt <= 2 * LATENCY + 0.02
            assert abs(clock["offsets"][peer] - expected) <= rtt / 2 + FLOAT_SLACK
            # probed within the last few probe intervals (3 s of probing just ran)
            assert 0 <= clock["age"][peer] < 3.0
        worst = max(abs(SKEWS[p] - SKEWS[me]) for p in others)
        assert clock["max_abs_offset"] == pytest.approx(worst, abs=0.02)
        assert clock["bound"] == 0.5


async def test_warning_past_half_the_bound_once_a_minute_per_peer(
    base: FakeClock, cluster: dict[str, PeerRing], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    await run_for(base, 3.0)

    # The 1 -> 2 and 2 -> 3 offsets (0.3 and 0.4 s) pass half the 0.5 s bound; 1 -> 3
    # (0.1 s) does not. Each node logs once per peer despite several probes.
    a, b, c = cluster.values()
    records = [r for r in caplog.records if r.name == LOGGER]
    about = sorted(str(r.args[0]) for r in records if r.args)
    assert about == ["127.0.0.1:7101", "127.0.0.2:7101", "127.0.0.2:7101", "127.0.0.3:7101"]
    assert a.sync_status()["clock"]["warnings"] == 1
    assert b.sync_status()["clock"]["warnings"] == 2
    assert c.sync_status()["clock"]["warnings"] == 1
    # A minute later, again (and only once more).
    await run_for(base, 60.0, step=0.01)
    assert a.sync_status()["clock"]["warnings"] == 2
    assert len([r for r in caplog.records if r.name == LOGGER]) == 8


async def test_metrics_export_one_gauge_per_peer(
    cluster: dict[str, PeerRing], base: FakeClock
) -> None:
    await run_for(base, 2.0)
    node = cluster["127.0.0.1:7101"]
    registry = CollectorRegistry()
    registry.register(PeerRingCollector(node))
    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
    }
    samples = {
        s.labels["peer"]: s.value for s in families["peer_ring_clock_offset_seconds"].samples
    }
    assert samples == pytest.approx({"127.0.0.2:7101": 0.3, "127.0.0.3:7101": -0.1}, abs=0.02)


async def test_an_old_peer_without_a_wall_clock_in_its_answer_is_tolerated(
    base: FakeClock,
) -> None:
    network = MemoryNetwork(base, latency=LATENCY)
    me, old = "127.0.0.1:7101", "127.0.0.9:7101"
    pings = 0

    def answer(source: str, request: Request) -> Response:
        nonlocal pings
        if request.command == "ping":
            pings += 1
            return Response(Status.OK, encode_ping(7, 0), "")  # the old layout: no clock
        return Response(Status.UNKNOWN_COMMAND, b"", "old peer")

    async def no_transfer(source: str, request: object) -> AsyncIterator[list[bytes]]:
        if False:  # pragma: no cover - an async generator that yields nothing
            yield []

    await network.transport(old).start(answer, no_transfer)
    node = PeerRing(
        FixedDiscovery(me, [me, old]),
        config=CONFIG,
        transport=network.transport(me),
        clock=SkewedClock(base, skew=0.0),
    )
    await node.start()
    try:
        await run_for(base, 3.0)
        status = node.sync_status()
        assert pings >= 2
        assert status["membership"]["probes_failed"] == 0
        assert old not in status["membership"]["suspected"]
        assert status["clock"]["offsets"] == {}
        assert status["clock"]["age"] == {}
        assert status["clock"]["max_abs_offset"] is None
    finally:
        await node.stop()


def test_wire_old_and_new_ping_layouts() -> None:
    assert decode_ping_wall(encode_ping(1, 0)) is None
    assert decode_ping_wall(encode_ping(1, 0, 1_700_000_000.25)) == 1_700_000_000.25
    assert decode_ping_wall(encode_ping(1, 0, float("nan"))) is None


def test_the_smallest_round_trip_sample_is_the_estimate() -> None:
    offsets = ClockOffsets(FakeClock(), bound=10.0)
    offsets.record("p", 100.0, 100.2, 100.5, rtt=0.2)  # offset 0.4, loose
    offsets.record("p", 101.0, 101.02, 101.11, rtt=0.02)  # offset 0.1, tight
    offsets.record("p", 102.0, 102.5, 103.0, rtt=0.5)  # offset 0.75, very loose
    offsets.record("p", 103.0, 102.0, 0.0, rtt=0.1)  # wall clock stepped back: ignored
    best = offsets.estimate("p")
    assert best is not None
    assert best.offset == pytest.approx(0.1)
    assert best.rtt == pytest.approx(0.02)
    offsets.forget("p")
    assert offsets.status()["offsets"] == {}


async def test_offsets_over_real_grpc(base: FakeClock) -> None:
    """The same estimate through the real gRPC transport (the wire field round-trips)."""
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    skews = dict(zip(addrs, (0.0, 0.2), strict=True))
    nodes = [
        PeerRing(
            FixedDiscovery(a, addrs),
            config=CONFIG,
            transport=GrpcTransport(a, clock=base),
            clock=SkewedClock(base, skew=skews[a]),
        )
        for a in addrs
    ]
    for node in nodes:
        await node.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10.0  # real seconds: bound of the wait on real I/O
        while not all(len(n.sync_status()["clock"]["offsets"]) == 1 for n in nodes):
            assert loop.time() < deadline, "no clock estimate over gRPC in time"
            await base.advance_async(0.1)
            await asyncio.sleep(0.01)
        a, b = nodes
        for me, peer, expected in ((a, b, 0.2), (b, a, -0.2)):
            clock = me.sync_status()["clock"]
            rtt = clock["rtt"][peer.address]
            assert abs(clock["offsets"][peer.address] - expected) <= rtt / 2 + FLOAT_SLACK
    finally:
        for node in nodes:
            await node.stop()
