"""The in-memory network keeps the transport contract its users rely on.

Other packages test their failure handling on ``MemoryNetwork``; if it answered where a
real transport fails (a closed node, an oversized request, a full queue, a reply lost on
a cut link, a transfer from a paused node), those tests would pass for the wrong reason.
Each case runs on fake time: deadlines are exact, and waits take no real time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable

import pytest

from peer_ring.core import (
    MessageTooLargeError,
    NotRunningError,
    OverloadedError,
    PeerUnavailableError,
    RequestTimeoutError,
)
from peer_ring.core._types import Request, Response, Status, TransferRequest
from peer_ring.core.testing import FakeClock, MemoryNetwork, MemoryTransport
from peer_ring.core.transport import TransportLimits

pytestmark = pytest.mark.fake_time

A, B, C = "a:1", "b:1", "c:1"


def echo(source: str, request: Request) -> Response:
    return Response(Status.OK, source.encode() + b">" + request.payload)


async def records(source: str, request: TransferRequest) -> AsyncIterator[list[bytes]]:
    for i in range(3):
        yield [b"r%d" % i]
        await asyncio.sleep(0)


async def started(
    net: MemoryNetwork, address: str, handler: object = echo, **limits: int
) -> MemoryTransport:
    transport = net.transport(address, limits=TransportLimits(**limits) if limits else None)
    await transport.start(handler, records)  # type: ignore[arg-type]
    return transport


def ask(
    transport: MemoryTransport, peer: str, payload: bytes = b"x", timeout: float = 2.0
) -> Awaitable[Response]:
    return transport.request(peer, Request("t", "c", b"k", payload, timeout=timeout))


async def test_a_closed_transport_refuses_and_fails_what_was_pending(loop_clock: FakeClock) -> None:
    net = MemoryNetwork(loop_clock)
    a, b = await started(net, A), await started(net, B)
    net.pause(B)
    pending = ask(a, B)
    await asyncio.sleep(0)
    await a.close()
    with pytest.raises(NotRunningError, match="a:1 closed"):
        await pending
    with pytest.raises(NotRunningError, match="a:1 is closed"):
        await ask(a, B)
    with pytest.raises(NotRunningError):
        async for _ in a.transfer(B, TransferRequest("t", 0, ()), 1.0):
            pass
    # And a peer that closed is refused by the others, at once.
    net.resume(B)
    await b.close()
    c = await started(net, C)
    with pytest.raises(PeerUnavailableError, match="connection refused"):
        await ask(c, B)


async def test_an_address_is_taken_until_its_transport_closes(loop_clock: FakeClock) -> None:
    net = MemoryNetwork(loop_clock)
    first = await started(net, A)
    with pytest.raises(OSError, match="a:1 is already in use"):
        await started(net, A)
    await first.close()
    second = await started(net, A)  # a restarted node on the same address
    await first.close()  # closing the old one again does not unregister the new one
    c = await started(net, C)
    assert (await ask(c, A, b"hi")).payload == b"c:1>hi"
    assert second.running


async def test_an_oversized_request_fails_before_it_is_sent(loop_clock: FakeClock) -> None:
    net = MemoryNetwork(loop_clock)
    seen: list[Request] = []

    def record(source: str, request: Request) -> Response:
        seen.append(request)
        return Response(Status.OK, b"")

    a, _ = await started(net, A, max_message_bytes=64), await started(net, B, record)
    with pytest.raises(
        MessageTooLargeError, match="request of 66 bytes exceeds max_message_bytes=64"
    ):
        await ask(a, B, b"p" * 65)  # key (1 byte) + payload
    assert (await ask(a, B, b"p" * 63)).status is Status.OK
    assert [len(r.payload) for r in seen] == [63]


async def test_the_queue_bound_fails_fast_and_frees_its_slots(loop_clock: FakeClock) -> None:
    net = MemoryNetwork(loop_clock)
    a, _ = await started(net, A, max_queued_per_peer=2), await started(net, B)
    net.pause(B)
    stuck = [asyncio.ensure_future(ask(a, B, timeout=5.0)) for _ in range(2)]
    start = loop_clock.monotonic()
    with pytest.raises(OverloadedError, match="too many requests queued for b:1"):
        await ask(a, B)
    assert loop_clock.monotonic() == start  # at once, not at a deadline
    for fut in stuck:
        with pytest.raises(RequestTimeoutError, match="timed out after 5s"):
            await fut
    assert loop_clock.monotonic() - start == pytest.approx(5.0)
    net.resume(B)
    assert (await ask(a, B, b"again")).payload == b"a:1>again"


async def test_handler_errors_become_error_responses(loop_clock: FakeClock) -> None:
    net = MemoryNetwork(loop_clock)

    def explode(source: str, request: Request) -> Response:
        raise RuntimeError("sync boom")

    async def explode_later(source: str, request: Request) -> Response:
        await asyncio.sleep(0)
        raise KeyError("async boom")

    async def fine_later(source: str, request: Request) -> Response:
        await asyncio.sleep(0)
        return Response(Status.OK, b"later")

    a = await started(net, A)
    await started(net, B, explode)
    await started(net, C, explode_later)
    response = await ask(a, B)
    assert (response.status, response.error) == (Status.ERROR, "RuntimeError: sync boom")
    response = await ask(a, C)
    assert (response.status, response.error) == (Status.ERROR, "KeyError: 'async boom'")
    d = await started(net, "d:1", fine_later)
    assert (await ask(a, d.address)).payload == b"later"


async def test_a_reply_lost_on_a_link_cut_meanwhile_ends_at_the_deadline(
    loop_clock: FakeClock,
) -> None:
    net = MemoryNetwork(loop_clock)
    handled: list[str] = []

    def cut_while_handling(source: str, request: Request) -> Response:
        handled.append(source)
        net.cut(source, B)  # the request arrived; its answer will not
        return Response(Status.OK, b"lost")

    a, _ = await started(net, A), await started(net, B, cut_while_handling)
    start = loop_clock.monotonic()
    with pytest.raises(RequestTimeoutError):
        await ask(a, B, timeout=3.0)
    assert handled == [A]
    assert loop_clock.monotonic() - start == pytest.approx(3.0)


async def test_a_request_cancelled_before_delivery_never_runs(loop_clock: FakeClock) -> None:
    net = MemoryNetwork(loop_clock)
    handled: list[bytes] = []

    def record(source: str, request: Request) -> Response:
        handled.append(request.payload)
        return Response(Status.OK, b"")

    a, _ = await started(net, A), await started(net, B, record)
    ask(a, B, b"cancelled").cancel()
    assert (await ask(a, B, b"kept")).status is Status.OK
    assert handled == [b"kept"]


async def test_cut_heal_and_partition_notify_both_ends(loop_clock: FakeClock) -> None:
    net = MemoryNetwork(loop_clock)
    nodes = {x: await started(net, x) for x in (A, B, C)}
    events: list[tuple[str, str, bool]] = []
    for address, transport in nodes.items():
        transport.add_reachability_listener(
            lambda peer, up, me=address: events.append((me, peer, up))
        )
    net.partition([A], [B, C])
    assert sorted(events) == [(A, B, False), (A, C, False), (B, A, False), (C, A, False)]
    with pytest.raises(PeerUnavailableError, match="network unreachable"):
        await ask(nodes[A], B)
    assert (await ask(nodes[B], C)).status is Status.OK  # the other side still talks
    events.clear()
    net.heal(A, B)
    assert sorted(events) == [(A, B, True), (B, A, True)]
    events.clear()
    net.heal()  # every remaining cut
    assert sorted(events) == [(A, C, True), (C, A, True)]
    assert (await ask(nodes[A], C)).status is Status.OK


async def test_transfers_stream_and_fail_like_a_real_transport(loop_clock: FakeClock) -> None:
    net = MemoryNetwork(loop_clock)
    a, b = await started(net, A), await started(net, B)
    request = TransferRequest("t", 0, ())
    assert [chunk async for chunk in a.transfer(B, request, 4.0)] == [[b"r0"], [b"r1"], [b"r2"]]
    # From a paused node: nothing, then a timeout after exactly the transfer timeout.
    net.pause(B)
    start = loop_clock.monotonic()
    with pytest.raises(RequestTimeoutError, match="transfer from b:1 timed out after 4s"):
        async for _ in a.transfer(B, request, 4.0):
            pass
    assert loop_clock.monotonic() - start == pytest.approx(4.0)
    net.resume(B)
    # The link cut, or the source closed, in the middle of the stream.
    got: list[list[bytes]] = []
    with pytest.raises(PeerUnavailableError, match="link lost during transfer"):
        async for chunk in a.transfer(B, request, 4.0):
            got.append(chunk)
            net.cut(A, B)
    assert got == [[b"r0"]]
    net.heal()
    got.clear()
    with pytest.raises(PeerUnavailableError, match="link lost during transfer"):
        async for chunk in a.transfer(B, request, 4.0):
            got.append(chunk)
            await b.close()
    assert got == [[b"r0"]]


async def test_latency_delays_each_way(loop_clock: FakeClock) -> None:
    net = MemoryNetwork(loop_clock, latency=0.25)
    a, _ = await started(net, A), await started(net, B)
    start = loop_clock.monotonic()
    assert (await ask(a, B, b"slow")).payload == b"a:1>slow"
    assert loop_clock.monotonic() - start == pytest.approx(0.5)
    # A reply arriving exactly at the deadline: one of the two wins, nothing breaks.
    errors: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
    with pytest.raises(RequestTimeoutError):
        await ask(a, B, timeout=0.5)
    await asyncio.sleep(1.0)
    assert errors == []


async def test_a_request_cancelled_while_its_handler_runs_drops_the_reply(
    loop_clock: FakeClock,
) -> None:
    net = MemoryNetwork(loop_clock)
    release = asyncio.Event()
    finished: list[bytes] = []

    async def slow(source: str, request: Request) -> Response:
        await release.wait()
        finished.append(request.payload)
        return Response(Status.OK, b"too late")

    errors: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
    a, _ = await started(net, A), await started(net, B, slow)
    fut = ask(a, B, b"given up")
    await asyncio.sleep(0.1)  # delivered; the handler waits
    fut.cancel()
    release.set()
    assert (await ask(a, B, b"next")).payload == b"too late"
    assert finished == [b"given up", b"next"]  # the handler ran; its reply went nowhere
    assert errors == []  # no InvalidStateError from answering a cancelled future
