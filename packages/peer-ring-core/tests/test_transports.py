"""The transports (GrpcTransport and TcpTransport) over real sockets on loopback (127.0.0.1,
.2, .3): every test here runs over each one (the ``transport_kind`` fixture; the ``nodes``
harness is in conftest.py). What only one transport does is in test_grpc_transport.py and
test_tcp_transport.py.

Every wait is bounded (``asyncio.wait_for`` with a generous real-time limit) so that a bug
fails a test instead of hanging it; synchronisation is by events, never by sleeping.
Deadlines are driven by a FakeClock where a test is about them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from peer_ring.core._errors import (
    InvalidArgumentError,
    MessageTooLargeError,
    NotRunningError,
    OverloadedError,
    PeerUnavailableError,
    RemoteError,
    RequestTimeoutError,
    UnknownCommandError,
)
from peer_ring.core._types import Request, Response, Status, TransferRequest
from peer_ring.core.testing import FakeClock, free_port, settle_loop
from peer_ring.core.transport import TransportLimits

#: Upper bound of any single wait in these tests (real seconds). Only reached on a bug.
LIMIT = 15.0

#: Small limits so reconnect tests run fast.
FAST = TransportLimits(backoff_initial=0.02, backoff_max=0.2, connect_timeout=2.0)

#: ``await nodes(...)``: a started ``TransportNode`` of conftest.py.
NodeFactory = Callable[..., Awaitable[Any]]
Node = Any


def echo(sender: str, request: Request) -> Response:
    return Response(Status.OK, request.payload)


async def no_transfer(sender: str, request: TransferRequest) -> AsyncIterator[list[bytes]]:
    raise UnknownCommandError("no transfers here")
    yield []  # pragma: no cover - makes this an async generator


async def bounded(aw: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(aw, LIMIT)


# -- round trips ----------------------------------------------------------------------------------


async def test_round_trip_carries_every_field_and_the_sender(nodes: NodeFactory) -> None:
    seen: list[tuple[str, Request]] = []

    def record(sender: str, request: Request) -> Response:
        seen.append((sender, request))
        return Response(Status.OK, b"re:" + request.payload)

    a = await nodes()
    b = await nodes(handler=record)
    req = Request("kv", "set", b"user:1", b"\x00\xffvalue", 77, "127.0.0.9:1", 1.5)
    resp = await bounded(a.transport.request(b.address, req))
    assert resp == Response(Status.OK, b"re:\x00\xffvalue", "")
    assert seen == [
        (a.address, Request("kv", "set", b"user:1", b"\x00\xffvalue", 77, "127.0.0.9:1", 1.5))
    ]
    # And the other direction, on the stream b opens to a.
    resp = await bounded(b.request(a, b"back"))
    assert resp.payload == b"back"
    assert a.transport.stats()["streams_opened"] == 1
    assert b.transport.stats()["streams_opened"] == 1


async def test_one_port_on_three_loopback_addresses(nodes: NodeFactory) -> None:
    port = free_port("127.0.0.1", "127.0.0.2", "127.0.0.3")
    trio = [await nodes(host, port=port) for host in ("127.0.0.1", "127.0.0.2", "127.0.0.3")]
    assert len({n.address for n in trio}) == 3
    for src in trio:
        for dst in trio:
            if src is not dst:
                resp = await bounded(src.request(dst, f"{src.address}->{dst.address}".encode()))
                assert resp.payload == f"{src.address}->{dst.address}".encode()


async def test_port_zero_reports_the_bound_port(nodes: NodeFactory, transport_class: Any) -> None:
    a = await nodes()
    b_transport = transport_class("127.0.0.1:0", limits=FAST)
    await b_transport.start(echo, no_transfer)
    try:
        assert not b_transport.address.endswith(":0")
        assert (await bounded(a.request(b_transport.address, b"x"))).payload == b"x"
    finally:
        await b_transport.close()


@pytest.mark.parametrize("in_flight", [64, 256])
async def test_many_in_flight_between_three_nodes_all_matched(
    nodes: NodeFactory, in_flight: int
) -> None:
    trio = [await nodes(host) for host in ("127.0.0.1", "127.0.0.2", "127.0.0.3")]
    futures: list[tuple[bytes, asyncio.Future[Response]]] = []
    for src in trio:
        for dst in trio:
            if src is dst:
                continue
            for i in range(in_flight):
                payload = f"{src.address}/{dst.address}/{i}".encode()
                futures.append((payload, src.request(dst, payload)))
    results = await bounded(asyncio.gather(*(f for _, f in futures), return_exceptions=True))
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    assert [r.payload for r in results] == [p for p, _ in futures]
    assert all(r.status is Status.OK for r in results)
    for node in trio:
        stats = node.transport.stats()
        assert stats["requests_sent"] == 2 * in_flight
        assert stats["responses_received"] == 2 * in_flight
        # All requests were queued before the writers ran: they travel coalesced.
        assert stats["frames_sent"] < stats["requests_sent"] + stats["responses_sent"]


async def test_sustained_load_from_every_node_matches_every_reply(nodes: NodeFactory) -> None:
    """Workers keep 64 requests in flight per pair for a bounded number of rounds."""
    trio = [await nodes(host) for host in ("127.0.0.1", "127.0.0.2", "127.0.0.3")]
    rounds = 20
    mismatches = 0

    async def worker(src: Node, dst: Node, w: int) -> None:
        nonlocal mismatches
        for i in range(rounds):
            payload = f"{src.address}/{dst.address}/{w}/{i}".encode()
            resp = await src.request(dst, payload)
            mismatches += resp.payload != payload

    workers = [
        worker(src, dst, w) for src in trio for dst in trio if src is not dst for w in range(64)
    ]
    await bounded(asyncio.gather(*workers))
    assert mismatches == 0
    assert sum(n.transport.stats()["requests_sent"] for n in trio) == 6 * 64 * rounds


# -- handlers -------------------------------------------------------------------------------------


async def test_awaitable_handlers_coroutine_and_future(nodes: NodeFactory) -> None:
    async def slow(sender: str, request: Request) -> Response:
        await asyncio.sleep(0)
        return Response(Status.OK, b"coro:" + request.payload)

    def future_handler(sender: str, request: Request) -> asyncio.Future[Response]:
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(fut.set_result, Response(Status.OK, b"fut"))
        return fut

    a = await nodes()
    b = await nodes(handler=slow)
    c = await nodes(handler=future_handler)
    assert (await bounded(a.request(b, b"x"))).payload == b"coro:x"
    assert (await bounded(a.request(c, b"x"))).payload == b"fut"


async def test_handler_errors_become_statuses_and_the_stream_survives(
    nodes: NodeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    def picky(sender: str, request: Request) -> Response:
        if request.payload == b"boom":
            raise ValueError("boom happened")
        if request.payload == b"unknown":
            raise UnknownCommandError("no such command")
        if request.payload == b"not-a-response":
            return "oops"  # type: ignore[return-value]
        return Response(Status.OK, request.payload)

    async def async_boom(sender: str, request: Request) -> Response:
        raise RuntimeError("async boom")

    a = await nodes()
    b = await nodes(handler=picky)
    c = await nodes(handler=async_boom)
    with caplog.at_level(logging.WARNING, logger="peer_ring.core.transport"):
        resp = await bounded(a.request(b, b"boom"))
    assert resp.status is Status.ERROR
    assert "boom happened" in resp.error
    assert any("raised" in r.message for r in caplog.records)
    resp = await bounded(a.request(b, b"unknown"))
    assert (resp.status, resp.error) == (Status.UNKNOWN_COMMAND, "no such command")
    resp = await bounded(a.request(b, b"not-a-response"))
    assert resp.status is Status.ERROR and "str" in resp.error
    resp = await bounded(a.request(c, b"x"))
    assert resp.status is Status.ERROR and "async boom" in resp.error
    # Same stream, still serving.
    assert (await bounded(a.request(b, b"fine"))).payload == b"fine"
    assert a.transport.stats()["streams_opened"] == 2  # one to b, one to c
    assert a.transport.stats()["stream_failures"] == 0
    assert b.transport.stats()["handler_errors"] == 3


async def test_bad_request_fields_fail_the_future_not_the_caller(nodes: NodeFactory) -> None:
    a = await nodes()
    b = await nodes()
    fut = a.transport.request(b.address, Request("t", "c", key="str-key"))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        await bounded(fut)
    fut = a.transport.request(b.address, Request("t", "c", partition=-1))
    with pytest.raises(InvalidArgumentError):
        await bounded(fut)
    # Odd deadlines are tolerated: NaN means the default, inf is capped.
    for timeout in (float("nan"), float("inf"), -1.0):
        resp = await bounded(a.request(b, b"odd", timeout=timeout))
        assert resp.payload == b"odd"
    assert (await bounded(a.request(b, b"ok"))).payload == b"ok"


def test_token_must_be_printable_ascii(transport_class: Any) -> None:
    kind = transport_class
    with pytest.raises(InvalidArgumentError):
        kind("127.0.0.1:1", token="caf\u00e9")
    with pytest.raises(InvalidArgumentError):
        kind("127.0.0.1:1", token="line\nbreak")
    kind("127.0.0.1:1", token="")  # empty = no token


# -- deadlines and cancellation -------------------------------------------------------------------


class Stuck:
    """A handler that never answers until released; records starts and cancellations."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.release = asyncio.Event()
        self.active = 0
        self.max_active = 0
        self.calls = 0
        self._arrived = asyncio.Event()

    async def until_active(self, n: int) -> None:
        """Wait (on an event, not for loop turns) until ``n`` calls are running at once."""
        while self.active < n:
            self._arrived.clear()
            await self._arrived.wait()

    async def __call__(self, sender: str, request: Request) -> Response:
        self.calls += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.started.set()
        self._arrived.set()
        try:
            await self.release.wait()
            return Response(Status.OK, request.payload)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        finally:
            self.active -= 1


async def test_deadline_fails_with_timeout_and_cancels_remote_work(nodes: NodeFactory) -> None:
    clock = FakeClock()
    stuck = Stuck()
    a = await nodes(clock=clock)
    b = await nodes(handler=stuck)
    fut = a.request(b, b"x", timeout=1.0)
    await bounded(stuck.started.wait())
    await clock.advance_async(0.9)
    assert not fut.done()  # never early
    await clock.advance_async(0.2)
    with pytest.raises(RequestTimeoutError, match=r"test/echo to .* within 1s"):
        await bounded(fut)
    await bounded(stuck.cancelled.wait())  # the cancel id reached b
    assert a.transport.stats()["timeouts"] == 1
    assert a.transport.stats()["cancels_sent"] == 1
    stuck.release.set()
    assert (await bounded(a.request(b, b"after"))).payload == b"after"


async def test_default_timeout_applies_when_request_has_none(nodes: NodeFactory) -> None:
    clock = FakeClock()
    stuck = Stuck()
    limits = TransportLimits(default_timeout=3.0)
    a = await nodes(clock=clock, limits=limits)
    b = await nodes(handler=stuck)
    fut = a.request(b, b"x", timeout=0.0)
    await bounded(stuck.started.wait())
    await clock.advance_async(2.9)
    assert not fut.done()
    await clock.advance_async(0.2)
    with pytest.raises(RequestTimeoutError):
        await bounded(fut)


async def test_real_short_deadline(nodes: NodeFactory) -> None:
    stuck = Stuck()
    a = await nodes()
    b = await nodes(handler=stuck)
    start = time.monotonic()
    with pytest.raises(RequestTimeoutError):
        await bounded(a.request(b, b"x", timeout=0.2))
    assert 0.2 <= time.monotonic() - start < LIMIT


async def test_cancelling_the_future_frees_the_slot_and_cancels_remote_work(
    nodes: NodeFactory, transport_kind: str
) -> None:
    stuck = Stuck()
    a = await nodes(limits=TransportLimits(max_in_flight_per_peer=1))
    b = await nodes(handler=stuck)
    first = a.request(b, b"first")
    await bounded(stuck.started.wait())
    second = a.request(b, b"second")  # waits in the queue: only one may be in flight
    if transport_kind == "grpc":
        # The client holds it back itself (no loop turns to count: its queue is the
        # evidence): two outstanding, one of them on the wire.
        assert a.transport.peer_stats()[b.address] == {"in_flight": 1, "pending": 2}
    else:
        await settle_loop()  # TcpTransport has no peer_stats(): give it loop turns to misbehave
    assert stuck.calls == 1
    first.cancel()
    await bounded(stuck.cancelled.wait())
    stuck.release.set()
    assert (await bounded(second)).payload == b"second"
    assert first.cancelled()
    assert stuck.max_active == 1


async def test_cancelling_the_awaiting_task_cancels_the_request(nodes: NodeFactory) -> None:
    stuck = Stuck()
    a = await nodes()
    b = await nodes(handler=stuck)
    task = asyncio.ensure_future(a.request(b, b"x"))
    await bounded(stuck.started.wait())
    task.cancel()
    await bounded(stuck.cancelled.wait())
    assert a.transport.stats()["cancels_sent"] == 1


# -- limits ---------------------------------------------------------------------------------------


async def test_in_flight_bound_is_respected(nodes: NodeFactory, transport_kind: str) -> None:
    stuck = Stuck()
    a = await nodes(limits=TransportLimits(max_in_flight_per_peer=4))
    b = await nodes(handler=stuck)
    futures = [a.request(b, str(i).encode()) for i in range(20)]
    await bounded(stuck.until_active(4))
    if transport_kind == "grpc":
        # 20 outstanding, 4 on the wire: the other 16 wait in the client's queue.
        assert a.transport.peer_stats()[b.address] == {"in_flight": 4, "pending": 20}
    else:
        await settle_loop()  # TcpTransport has no peer_stats(): give it loop turns to misbehave
    assert stuck.active == 4
    stuck.release.set()
    results = await bounded(asyncio.gather(*futures))
    assert [r.payload for r in results] == [str(i).encode() for i in range(20)]
    assert stuck.max_active == 4


async def test_overload_fails_at_once(nodes: NodeFactory) -> None:
    stuck = Stuck()
    limits = TransportLimits(max_in_flight_per_peer=2, max_queued_per_peer=3)
    a = await nodes(limits=limits)
    b = await nodes(handler=stuck)
    accepted = [a.request(b, str(i).encode()) for i in range(5)]
    refused = a.request(b, b"one too many")
    assert refused.done()
    with pytest.raises(OverloadedError):
        refused.result()
    stuck.release.set()
    results = await bounded(asyncio.gather(*accepted))
    assert [r.payload for r in results] == [str(i).encode() for i in range(5)]
    assert a.transport.stats()["overloaded"] == 1


async def test_oversized_request_fails_and_the_stream_continues(nodes: NodeFactory) -> None:
    limits = TransportLimits(max_message_bytes=64 * 1024)
    a = await nodes(limits=limits)
    b = await nodes(limits=limits)
    assert (await bounded(a.request(b, b"warm"))).payload == b"warm"
    big = a.request(b, b"x" * (64 * 1024))
    assert big.done()
    with pytest.raises(MessageTooLargeError, match="max_message_bytes=65536"):
        big.result()
    fits = b"y" * (60 * 1024)
    assert (await bounded(a.request(b, fits))).payload == fits
    assert a.transport.stats()["stream_failures"] == 0


async def test_many_requests_split_into_frames_under_the_size_limit(nodes: NodeFactory) -> None:
    limits = TransportLimits(max_message_bytes=16 * 1024)
    a = await nodes(limits=limits)
    b = await nodes(limits=limits)
    await bounded(a.request(b, b"warm"))
    payloads = [bytes([i]) * 5000 for i in range(40)]  # 200 KB queued at once
    results = await bounded(asyncio.gather(*(a.request(b, p) for p in payloads)))
    assert [r.payload for r in results] == payloads
    assert a.transport.stats()["frames_sent"] >= 1 + 200_000 // (16 * 1024)


async def test_oversized_response_becomes_an_error_response(nodes: NodeFactory) -> None:
    limits = TransportLimits(max_message_bytes=64 * 1024)

    def inflate(sender: str, request: Request) -> Response:
        return Response(Status.OK, request.payload * 100_000)

    a = await nodes(limits=limits)
    b = await nodes(handler=inflate, limits=limits)
    resp = await bounded(a.request(b, b"x"))
    assert resp.status is Status.TOO_LARGE
    assert "max_message_bytes=65536" in resp.error
    assert (await bounded(a.request(b, b""))).status is Status.OK
    assert b.transport.stats()["oversized_responses"] == 1


# -- failures and reconnection --------------------------------------------------------------------


async def test_peer_down_fails_fast(nodes: NodeFactory) -> None:
    a = await nodes()
    nowhere = f"127.0.0.1:{free_port('127.0.0.1')}"
    start = time.monotonic()
    with pytest.raises(PeerUnavailableError) as info:
        await bounded(a.request(nowhere, b"x", timeout=30.0))
    assert time.monotonic() - start < 5.0
    assert info.value.peer == nowhere
    await a.wait_reachability(nowhere, False)
    # While the peer is in backoff, requests fail at once.
    again = a.request(nowhere, b"x")
    assert again.done()
    with pytest.raises(PeerUnavailableError):
        again.result()
    with pytest.raises(PeerUnavailableError):
        await bounded(a.transport.connect(nowhere))


async def test_peer_restart_fails_pending_then_reconnects(nodes: NodeFactory) -> None:
    stuck = Stuck()
    a = await nodes()
    port = free_port("127.0.0.2")
    b = await nodes("127.0.0.2", port=port, handler=stuck)
    stuck.release.set()
    assert (await bounded(a.request(b, b"one"))).payload == b"one"
    await a.wait_reachability(b.address, True)

    stuck.release.clear()
    pending = a.request(b, b"pending")
    await bounded(stuck.started.wait())
    await b.transport.close()
    with pytest.raises(PeerUnavailableError):
        await bounded(pending)
    await a.wait_reachability(b.address, False)

    reborn = await nodes("127.0.0.2", port=port)
    assert reborn.address == b.address
    a.reachability.clear()
    await a.wait_reachability(b.address, True)
    assert (await bounded(a.request(reborn, b"two"))).payload == b"two"
    assert a.transport.stats()["stream_failures"] == 1
    assert a.reachability == [(b.address, True)]  # only changes are reported


async def test_forget_peer_fails_pending_and_a_later_request_reconnects(nodes: NodeFactory) -> None:
    stuck = Stuck()
    a = await nodes()
    b = await nodes(handler=stuck)
    pending = a.request(b, b"x")
    await bounded(stuck.started.wait())
    a.transport.forget_peer(b.address)
    with pytest.raises(PeerUnavailableError, match="left the cluster"):
        await bounded(pending)
    assert b.address not in a.transport.peers()
    stuck.release.set()
    assert (await bounded(a.request(b, b"y"))).payload == b"y"


async def test_close_fails_pending_with_not_running(nodes: NodeFactory) -> None:
    stuck = Stuck()
    a = await nodes()
    b = await nodes(handler=stuck)
    pending = a.request(b, b"x")
    await bounded(stuck.started.wait())
    await bounded(a.transport.close())
    with pytest.raises(NotRunningError):
        await bounded(pending)
    with pytest.raises(NotRunningError):
        await bounded(a.request(b, b"x"))
    await a.transport.close()  # idempotent
    with pytest.raises(NotRunningError):
        await a.transport.start(echo, no_transfer)


async def test_request_before_start_fails(transport_class: Any) -> None:
    t = transport_class(f"127.0.0.1:{free_port('127.0.0.1')}")
    with pytest.raises(NotRunningError):
        await bounded(t.request("127.0.0.1:1", Request("a", "b")))
    await t.close()


async def test_second_bind_on_the_same_address_fails_loudly(
    nodes: NodeFactory, transport_kind: str, transport_class: Any
) -> None:
    a = await nodes()
    twin = transport_class(a.address)
    expected = {"grpc": f"cannot listen on {a.address}", "tcp": "ddress already in use"}
    with pytest.raises(OSError, match=expected[transport_kind]):
        await twin.start(echo, no_transfer)
    await twin.close()
    assert (await bounded(a.request(a, b"still me"))).payload == b"still me"


# -- bulk transfer --------------------------------------------------------------------------------


def records_for(partition: int, count: int, size: int) -> list[bytes]:
    return [f"{partition}:{i}:".encode().ljust(size, b".") for i in range(count)]


async def test_bulk_transfer_streams_every_record_in_chunks(nodes: NodeFactory) -> None:
    seen: list[tuple[str, TransferRequest]] = []

    async def export(sender: str, request: TransferRequest) -> AsyncIterator[list[bytes]]:
        seen.append((sender, request))
        everything = records_for(request.partition, 2000, 1000)
        for start in range(0, len(everything), 500):
            yield everything[start : start + 500]

    limits = TransportLimits(max_message_bytes=64 * 1024)
    a = await nodes(limits=limits)
    b = await nodes(transfer=export, limits=limits)
    got: list[bytes] = []
    chunks = 0
    async for chunk in a.transport.transfer(b.address, TransferRequest("kv", 12, (3, 5)), 5.0):
        chunks += 1
        got.extend(chunk)
    assert got == records_for(12, 2000, 1000)
    assert chunks >= 2_000_000 // (64 * 1024)  # split to respect the size limit
    assert seen == [(a.address, TransferRequest("kv", 12, (3, 5)))]


async def test_transfer_errors_are_typed(nodes: NodeFactory) -> None:
    async def failing(sender: str, request: TransferRequest) -> AsyncIterator[list[bytes]]:
        if request.namespace == "unknown":
            raise UnknownCommandError("no hooks for unknown")
        if request.namespace == "invalid":
            raise InvalidArgumentError("partition out of range")
        if request.namespace == "huge":
            yield [b"z" * (128 * 1024)]
        yield [b"one"]
        raise RuntimeError("disk on fire")

    limits = TransportLimits(max_message_bytes=64 * 1024)
    a = await nodes(limits=limits)
    b = await nodes(transfer=failing, limits=limits)

    async def collect(ns: str) -> list[bytes]:
        out: list[bytes] = []
        async for chunk in a.transport.transfer(b.address, TransferRequest(ns, 1), 5.0):
            out.extend(chunk)
        return out

    with pytest.raises(UnknownCommandError, match="no hooks"):
        await bounded(collect("unknown"))
    with pytest.raises(InvalidArgumentError, match="out of range"):
        await bounded(collect("invalid"))
    with pytest.raises(MessageTooLargeError):
        await bounded(collect("huge"))
    with pytest.raises(RemoteError, match="disk on fire"):
        await bounded(collect("kv"))
    with pytest.raises(PeerUnavailableError):
        await bounded(collect_from(a, f"127.0.0.1:{free_port('127.0.0.1')}"))


async def collect_from(node: Node, peer: str) -> list[bytes]:
    out: list[bytes] = []
    async for chunk in node.transport.transfer(peer, TransferRequest("kv", 1), 5.0):
        out.extend(chunk)
    return out


async def test_transfer_times_out_per_chunk(nodes: NodeFactory) -> None:
    clock = FakeClock()
    stall = asyncio.Event()

    async def slow(sender: str, request: TransferRequest) -> AsyncIterator[list[bytes]]:
        yield [b"first"]
        await stall.wait()
        yield [b"never"]

    a = await nodes(clock=clock)
    b = await nodes(transfer=slow)
    stream = a.transport.transfer(b.address, TransferRequest("kv", 1), 2.0)
    assert await bounded(anext(stream)) == [b"first"]
    nxt = asyncio.ensure_future(anext(stream))
    await settle_loop()
    await clock.advance_async(1.9)
    assert not nxt.done()
    await clock.advance_async(0.2)
    with pytest.raises(RequestTimeoutError, match="no chunk within 2s"):
        await bounded(nxt)
    stall.set()
