"""The gRPC transport's Nagle-like hold (``_linger.hold``), over real gRPC on loopback.

While a frame to a peer is unanswered (and at least ``HOLD_MIN_IN_FLIGHT`` requests are in
flight to it), new requests to that peer wait for its answers (at most ``hold`` seconds)
and then go out together. What must hold: a request to an idle peer, or behind a single
in-flight request, is never held; the held requests all go out in one frame once the
answers arrive; the cap bounds the wait behind slow requests (stretched to the peer's
measured round trip, within ``HOLD_MAX_SECONDS``); a deadline still fails a held request
(never sent); a cancel is not held. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from peer_ring.core._errors import InvalidArgumentError, RequestTimeoutError
from peer_ring.core._types import Request, Response, Status
from peer_ring.core.testing import settle_loop
from peer_ring.core.transport import GrpcTransport
from peer_ring.core.transport._linger import (
    HOLD_MAX_SECONDS,
    HOLD_MIN_IN_FLIGHT,
    HOLD_RTT_FACTOR,
    hold_cap,
)

#: Upper bound of any single wait in these tests (real seconds). Only reached on a bug.
LIMIT = 15.0

#: A hold no test waits out: whatever goes out before it was released by an answer. Over
#: the 1 s the constructor accepts (a guard against milliseconds given as seconds), so set
#: on the transport directly, before its first connection.
LONG_HOLD = 30.0

NodeFactory = Callable[..., Awaitable[Any]]


@pytest.fixture
def transport_kind() -> str:
    """The hold is the gRPC transport's (overrides the parametrized fixture of conftest.py)."""
    return "grpc"


class Gate:
    """A handler that answers at once, except ``key=b"slow"``: it waits for :attr:`open`."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.arrivals = 0
        self.arrived = asyncio.Event()  # set on each slow arrival
        self.cancelled = asyncio.Event()

    def __call__(self, sender: str, request: Request) -> Response | Awaitable[Response]:
        if request.key == b"slow":
            return self._slow(request)
        return Response(Status.OK, request.payload)

    async def _slow(self, request: Request) -> Response:
        self.arrivals += 1
        self.arrived.set()
        try:
            await self.open.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return Response(Status.OK, request.payload)


async def bounded(aw: Awaitable[Any], limit: float = LIMIT) -> Any:
    return await asyncio.wait_for(aw, limit)


async def holding(nodes: NodeFactory, hold: float) -> Any:
    """A started gRPC node whose connections hold for ``hold`` seconds."""
    node = await nodes(hold=min(hold, 1.0))
    node.transport._hold = hold
    return node


async def slow_pair(
    nodes: NodeFactory, hold: float, in_flight: int = HOLD_MIN_IN_FLIGHT
) -> tuple[Any, Any, Any, Any]:
    """A (holding ``hold``) with ``in_flight`` slow requests in flight to B (the first
    gathers them all: ``slow``); C answers at once."""
    gate = Gate()
    a = await holding(nodes, hold)
    b = await nodes(handler=gate)
    c = await nodes()
    await bounded(a.transport.connect(b.address))
    await bounded(a.transport.connect(c.address))
    calls = [a.request(b, b"slow", key=b"slow") for _ in range(in_flight)]
    while gate.arrivals < in_flight:
        gate.arrived.clear()
        await bounded(gate.arrived.wait())
    return a, b, c, (gate, calls[0], asyncio.gather(*calls[1:]))


async def let_time_pass(a: Any, c: Any) -> None:
    """Loop turns plus a round trip to another peer: an unheld write would be out by then."""
    await settle_loop(50)
    assert (await bounded(a.request(c, b"tick"))).payload == b"tick"
    await settle_loop(50)


async def test_requests_behind_an_unanswered_frame_go_out_together(nodes: NodeFactory) -> None:
    a, b, c, (gate, slow, others) = await slow_pair(nodes, LONG_HOLD)
    frames_before = b.transport.stats()["frames_received"]
    held = [a.request(b, b"p%d" % i) for i in range(5)]
    await let_time_pass(a, c)
    assert b.transport.stats()["requests_received"] == HOLD_MIN_IN_FLIGHT  # the slow ones
    assert not any(f.done() for f in held)

    gate.open.set()  # the slow requests are answered: the held ones go out, in one frame
    answers = await bounded(asyncio.gather(slow, *held))
    assert [r.payload for r in answers] == [b"slow"] + [b"p%d" % i for i in range(5)]
    await bounded(others)
    assert b.transport.stats()["requests_received"] == HOLD_MIN_IN_FLIGHT + 5
    assert b.transport.stats()["frames_received"] == frames_before + 1


async def test_a_request_to_an_idle_peer_is_not_held(nodes: NodeFactory) -> None:
    a = await holding(nodes, LONG_HOLD)
    b = await nodes()
    await bounded(a.transport.connect(b.address))
    for i in range(3):  # each one alone: the previous one is answered
        response = await bounded(a.request(b, b"alone%d" % i), limit=LONG_HOLD / 3)
        assert response.payload == b"alone%d" % i
    assert a.transport.stats()["frames_sent"] == 3


async def test_the_cap_bounds_the_wait_behind_a_slow_request(nodes: NodeFactory) -> None:
    a, b, _c, (gate, slow, others) = await slow_pair(nodes, 0.05)
    fast = await bounded(asyncio.gather(*(a.request(b, b"f%d" % i) for i in range(3))))
    assert [r.payload for r in fast] == [b"f0", b"f1", b"f2"]
    assert not slow.done()  # sent after the cap, while the slow ones still run
    gate.open.set()
    assert (await bounded(slow)).payload == b"slow"
    await bounded(others)


async def test_the_cap_stretches_to_the_peers_round_trip(nodes: NodeFactory) -> None:
    a, b, _c, (gate, slow, others) = await slow_pair(nodes, 0.001)
    rtt = 0.012  # as if measured: the cap becomes 1.5 x 12 ms = 18 ms, not 1 ms
    a.transport._peers[b.address].latency = rtt
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert (await bounded(a.request(b, b"fast"))).payload == b"fast"
    # Held behind the slow ones for the stretched cap (a timer never fires early).
    assert loop.time() - began >= hold_cap(0.001, rtt) * 0.9
    assert not slow.done()
    gate.open.set()
    assert (await bounded(slow)).payload == b"slow"
    await bounded(others)


async def test_a_held_request_still_meets_its_deadline(nodes: NodeFactory) -> None:
    a, b, c, (gate, slow, others) = await slow_pair(nodes, LONG_HOLD)
    late = a.request(b, b"late", timeout=0.1)
    with pytest.raises(RequestTimeoutError):
        await bounded(late)
    await let_time_pass(a, c)
    assert b.transport.stats()["requests_received"] == HOLD_MIN_IN_FLIGHT  # never sent
    gate.open.set()
    assert (await bounded(slow)).payload == b"slow"
    await bounded(others)
    # The next frame is not held behind the expired request.
    assert (await bounded(a.request(b, b"next"), limit=LONG_HOLD / 3)).payload == b"next"


async def test_a_cancel_is_not_held(nodes: NodeFactory) -> None:
    a, b, c, (gate, slow, others) = await slow_pair(nodes, LONG_HOLD)
    held = a.request(b, b"held")
    await let_time_pass(a, c)
    assert not held.done()
    slow.cancel()  # the cancel goes out at once, with the held request
    await bounded(gate.cancelled.wait(), limit=LONG_HOLD / 3)
    assert (await bounded(held, limit=LONG_HOLD / 3)).payload == b"held"
    assert b.transport.stats()["cancels_received"] == 1
    gate.open.set()
    await bounded(others)


async def test_hold_zero_sends_at_once(nodes: NodeFactory) -> None:
    a, b, _c, (gate, slow, others) = await slow_pair(nodes, 0.0)
    assert (await bounded(a.request(b, b"now"), limit=LONG_HOLD / 3)).payload == b"now"
    assert not slow.done()
    gate.open.set()
    await bounded(slow)
    await bounded(others)


async def test_a_request_behind_a_single_one_in_flight_is_not_held(nodes: NodeFactory) -> None:
    a, b, _c, (gate, slow, others) = await slow_pair(nodes, LONG_HOLD, in_flight=1)
    assert (await bounded(a.request(b, b"now"), limit=LONG_HOLD / 3)).payload == b"now"
    assert not slow.done()
    gate.open.set()
    await bounded(slow)
    await bounded(others)


@pytest.mark.parametrize("bad", [-0.001, 1.5, math.nan, math.inf])
def test_hold_out_of_range_is_refused(bad: float) -> None:
    with pytest.raises(InvalidArgumentError, match="hold"):
        GrpcTransport("127.0.0.1:0", hold=bad)


@pytest.mark.parametrize(
    ("seconds", "rtt", "expected"),
    [
        (0.005, None, 0.005),  # no round trip measured yet: the configured cap
        (0.005, 0.001, 0.005),  # a fast peer keeps the configured cap
        (0.005, 0.005 / HOLD_RTT_FACTOR, 0.005),  # exactly at the cap: unchanged
        (0.005, 0.01, 0.01 * HOLD_RTT_FACTOR),  # a slower peer stretches it
        (0.005, 10.0, HOLD_MAX_SECONDS),  # never beyond the maximum...
        (0.2, 10.0, 0.2),  # ...unless the configured cap is longer still
        (0.2, 0.01, 0.2),
    ],
)
def test_hold_cap_follows_the_round_trip_within_bounds(
    seconds: float, rtt: float | None, expected: float
) -> None:
    assert hold_cap(seconds, rtt) == pytest.approx(expected)
