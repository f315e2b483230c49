"""Resource limits of the gRPC transport's serving side, under hostile or broken clients.

Each test plays a client that breaks one rule (too many streams, too many transfers, never
reading its answers, handlers that never finish, absurd deadlines, oversized frames, a
flood of connections, a ping flood) and checks three things: the node refuses or throttles
it with a clear status, counts it in ``stats()``, and keeps serving a well-behaved peer.

Every loop is bounded in count and in time; waits are events or polls with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import pytest

from peer_ring.core._errors import InvalidArgumentError, OverloadedError
from peer_ring.core._types import Request, Response, Status, TransferRequest
from peer_ring.core.proto import peer_ring_pb2 as pb
from peer_ring.core.testing import FakeClock, free_port
from peer_ring.core.transport import GrpcTransport, TransportLimits
from peer_ring.core.transport._options import (
    EXCHANGE_PATH,
    SENDER_KEY,
    TRANSFER_PATH,
    server_options,
)

LIMIT = 15.0
FAST = TransportLimits(backoff_initial=0.02, backoff_max=0.2, connect_timeout=2.0)
SENDER = ((SENDER_KEY, "client:1"),)

Handler = Callable[[str, Request], "Response | Awaitable[Response]"]
Transfer = Callable[[str, TransferRequest], AsyncIterator[list[bytes]]]


def echo(sender: str, request: Request) -> Response:
    return Response(Status.OK, request.payload)


async def one_record(sender: str, request: TransferRequest) -> AsyncIterator[list[bytes]]:
    yield [b"record"]


Factory = Callable[..., Awaitable[GrpcTransport]]


@pytest.fixture
async def transports() -> AsyncIterator[Factory]:
    made: list[GrpcTransport] = []

    async def make(
        handler: Handler = echo, transfer: Transfer = one_record, **kwargs: Any
    ) -> GrpcTransport:
        kwargs.setdefault("limits", FAST)
        transport = GrpcTransport(f"127.0.0.1:{free_port('127.0.0.1')}", **kwargs)
        made.append(transport)
        await transport.start(handler, transfer)
        return transport

    yield make
    await asyncio.gather(*(t.close() for t in made))


@pytest.fixture
async def channels() -> AsyncIterator[Callable[..., grpc.aio.Channel]]:
    """Raw client channels (a hand-made, possibly hostile client); closed at the end."""
    made: list[grpc.aio.Channel] = []

    def make(address: str, **options: Any) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(address, options=list(options.items()))
        made.append(channel)
        return channel

    yield make
    await asyncio.gather(*(c.close(None) for c in made))


async def bounded(aw: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(aw, LIMIT)


async def ask(src: GrpcTransport, dst: GrpcTransport, payload: bytes = b"x") -> Response:
    return await bounded(src.request(dst.address, Request("t", "echo", payload=payload, timeout=5)))


def exchange(channel: grpc.aio.Channel) -> grpc.aio.StreamStreamCall[bytes, bytes]:
    return channel.stream_stream(
        EXCHANGE_PATH, request_serializer=None, response_deserializer=None
    )(None, metadata=SENDER)


def frame(*requests: pb.Request) -> bytes:
    return pb.Frame(requests=list(requests)).SerializeToString()


async def poll(condition: Callable[[], bool], what: str, within: float = LIMIT) -> None:
    """Wait until ``condition()`` holds, checking every few milliseconds, for ``within`` s."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


# -- caps on concurrent calls ------------------------------------------------------------------


async def test_inbound_stream_cap_refuses_with_resource_exhausted(
    transports: Factory, channels: Callable[..., grpc.aio.Channel]
) -> None:
    server = await transports(limits=TransportLimits(max_inbound_streams=2))
    held = []
    for _i in range(2):
        call = exchange(channels(server.address))
        await bounded(call.initial_metadata())  # accepted
        held.append(call)
    third = exchange(channels(server.address))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await bounded(third.read())
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_inbound_streams=2" in (info.value.details() or "")
    assert server.stats()["refused_overload"] == 1
    # A slot frees when a stream ends: the next opener gets in.
    held.pop().cancel()
    await poll(lambda: len(server._inbound) < 2, "the cancelled stream to be released")
    fourth = exchange(channels(server.address))
    await bounded(fourth.initial_metadata())
    await bounded(fourth.write(frame(pb.Request(id=1, namespace="t", command="c", payload=b"hi"))))
    reply = pb.Frame.FromString(await bounded(fourth.read()))
    assert reply.responses[0].payload == b"hi"


async def test_transfer_cap_refuses_and_the_caller_gets_overloaded(transports: Factory) -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def slow(sender: str, request: TransferRequest) -> AsyncIterator[list[bytes]]:
        started.set()
        await release.wait()
        yield [b"done"]

    server = await transports(transfer=slow, limits=TransportLimits(max_inbound_transfers=1))
    client = await transports()

    async def pull() -> list[bytes]:
        out: list[bytes] = []
        async for chunk in client.transfer(server.address, TransferRequest("t", 1), 10.0):
            out.extend(chunk)
        return out

    first = asyncio.ensure_future(pull())
    await bounded(started.wait())
    with pytest.raises(OverloadedError, match="max_inbound_transfers=1"):
        await bounded(pull())
    release.set()
    assert await bounded(first) == [b"done"]
    assert server.stats()["refused_overload"] == 1
    assert await bounded(pull()) == [b"done"]  # the slot is free again


# -- a client that does not read ---------------------------------------------------------------


async def test_client_that_stops_reading_is_throttled_and_other_peers_are_unaffected(
    transports: Factory, channels: Callable[..., grpc.aio.Channel]
) -> None:
    bound = 1 << 20

    def amplify(sender: str, request: Request) -> Response:
        return Response(Status.OK, request.payload * 64)  # 64 KiB answers to 1 KiB asks

    server = await transports(
        handler=amplify, limits=TransportLimits(max_inbound_pending_bytes=bound)
    )
    peer = await transports()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        rogue = exchange(channels(server.address))
        await bounded(rogue.initial_metadata())
        blocked = False
        sent = 0
        started = time.monotonic()
        rid = 0
        # Write until the node stops reading us (our write blocks): bounded in frames and time.
        while sent < 2000 and time.monotonic() - started < 10.0:
            requests = []
            for _ in range(16):
                rid += 1
                requests.append(pb.Request(id=rid, namespace="t", command="c", payload=b"p" * 1024))
            write = asyncio.ensure_future(rogue.write(frame(*requests)))
            done, _ = await asyncio.wait({write}, timeout=1.0)
            if not done:
                blocked = True
                break
            write.result()
            sent += 1
        assert blocked, f"{sent} frames written and the node still reads them"
        stats = server.stats()
        assert stats["backpressure_pauses"] >= 1
        # What the node holds for this client is about the bound, not what it asked for.
        asked = rid * 64 * 1024
        held = sum(s._pending_bytes for s in server._inbound)
        assert held <= bound + 64 * 1024 + 1024
        assert asked > 20 * bound
        growth = tracemalloc.get_traced_memory()[0] - before
        assert growth < 8 * bound, f"Python memory grew by {growth} bytes"

        # Meanwhile a well-behaved peer is served normally.
        for i in range(20):
            response = await ask(peer, server, b"%d" % i)
            assert response.status is Status.OK and len(response.payload) == 64 * len(b"%d" % i)
    finally:
        tracemalloc.stop()
    write.cancel()  # ends the rogue's call
    await poll(lambda: len(server._inbound) == 1, "the rogue's stream to be released")
    assert (await ask(peer, server, b"z")).status is Status.OK


async def test_running_handlers_per_stream_are_bounded_then_expire(
    transports: Factory, channels: Callable[..., grpc.aio.Channel]
) -> None:
    clock = FakeClock()
    running = 0
    never = asyncio.Event()

    async def stuck(sender: str, request: Request) -> Response:
        nonlocal running
        running += 1
        try:
            await never.wait()
        finally:
            running -= 1
        return Response(Status.OK)

    server = await transports(
        handler=stuck,
        clock=clock,
        limits=TransportLimits(max_inbound_pending_requests=8, max_request_timeout=30.0),
    )
    call = exchange(channels(server.address))
    await bounded(call.initial_metadata())
    # 100 requests asking for an effectively infinite deadline (the wire's maximum).
    huge = 0xFFFFFFFF
    await bounded(
        call.write(
            frame(
                *(pb.Request(id=i, namespace="t", command="c", timeout_ms=huge) for i in range(100))
            )
        )
    )
    await poll(lambda: running == 8, "8 handlers to run")
    # The reader says it paused (no loop turns counted): and no 9th handler ran.
    await poll(lambda: server.stats()["backpressure_pauses"] == 1, "the reader to pause")
    assert running == 8
    # At the clamped deadline (30 s, not 49 days) the handlers are cancelled and answered;
    # the reader resumes and the next ones run, 8 at a time.
    answered: list[pb.Response] = []

    async def read_all() -> None:
        while len(answered) < 100:
            data = await call.read()
            assert isinstance(data, bytes)
            answered.extend(pb.Frame.FromString(data).responses)

    reader = asyncio.ensure_future(read_all())
    for round_ in range(1, 14):  # 100 requests need 13 rounds of 8
        await clock.advance_async(30.01)  # deadlines fire up to one wheel tick late
        expected = min(8 * round_, 100)
        await poll(lambda: len(answered) >= expected, f"{expected} answers")  # noqa: B023
    await bounded(reader)
    assert sorted(r.id for r in answered) == list(range(100))
    assert {r.status for r in answered} == {pb.TIMEOUT}
    assert "deadline of 30s" in answered[0].error
    assert server.stats()["inbound_timeouts"] == 100
    call.cancel()


async def test_inbound_deadlines_are_clamped(
    transports: Factory, channels: Callable[..., grpc.aio.Channel]
) -> None:
    seen: list[float] = []

    def record(sender: str, request: Request) -> Response:
        seen.append(request.timeout)
        return Response(Status.OK)

    limits = TransportLimits(default_timeout=3.0, max_request_timeout=60.0)
    server = await transports(handler=record, limits=limits)
    call = exchange(channels(server.address))
    await bounded(
        call.write(
            frame(
                pb.Request(id=1, namespace="t", command="c"),  # no deadline: the default
                pb.Request(id=2, namespace="t", command="c", timeout_ms=1500),
                pb.Request(id=3, namespace="t", command="c", timeout_ms=0xFFFFFFFF),
            )
        )
    )
    await bounded(call.read())
    assert seen == [3.0, 1.5, 60.0]
    call.cancel()


# -- oversized messages ------------------------------------------------------------------------


async def test_oversized_inbound_frame_is_refused_and_the_node_keeps_serving(
    transports: Factory, channels: Callable[..., grpc.aio.Channel]
) -> None:
    limits = TransportLimits(max_message_bytes=64 * 1024)
    server = await transports(limits=limits)
    peer = await transports(limits=limits)
    big = frame(pb.Request(id=1, namespace="t", command="c", payload=b"x" * (512 * 1024)))
    call = exchange(channels(server.address, **{"grpc.max_send_message_length": 1 << 24}))
    with contextlib.suppress(grpc.aio.AioRpcError):
        await bounded(call.write(big))
    assert await bounded(call.code()) == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Transfer requests are bounded the same way.
    transfer = channels(server.address, **{"grpc.max_send_message_length": 1 << 24}).unary_stream(
        TRANSFER_PATH, request_serializer=None, response_deserializer=None
    )(b"\x0a" + b"\xff\xff\x1f" + b"n" * (512 * 1024), metadata=SENDER)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await bounded(transfer.read())
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await ask(peer, server, b"fine")).payload == b"fine"


# -- floods ------------------------------------------------------------------------------------


async def test_connection_flood_is_survived_and_peers_are_unaffected(
    transports: Factory, channels: Callable[..., grpc.aio.Channel]
) -> None:
    """500 connections (loopback) of four hostile kinds, while a peer works.

    No wall-clock budget: on a loaded machine the flood takes longer, and the peer's
    requests (every one answered) and its stream (never failed) show it was unaffected.
    """
    limits = TransportLimits(max_inbound_streams=64, handshake_timeout=2.0)
    server = await transports(limits=limits)
    peer = await transports()
    assert (await ask(peer, server)).status is Status.OK
    host, _, port_text = server.address.rpartition(":")
    port = int(port_text)
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    sockets: list[asyncio.StreamWriter] = []
    calls = []
    refused_streams = 0
    latencies: list[float] = []
    started = time.monotonic()
    total = 500
    for i in range(total):
        kind = i % 4
        if kind == 3:
            # A real gRPC client opening an Exchange stream (most are over the cap).
            call = exchange(channels(server.address))
            calls.append(call)
            continue
        _, writer = await bounded(asyncio.open_connection(host, port))
        if kind == 1:
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)))
        elif kind == 2:
            writer.write(preface)  # an HTTP/2 preface, then silence
        sockets.append(writer)  # kind 0: connect and say nothing
        if i % 25 == 0:
            t0 = time.monotonic()
            assert (await ask(peer, server, b"%d" % i)).payload == b"%d" % i
            latencies.append(time.monotonic() - t0)
    attempted = len(sockets) + len(calls)
    assert attempted == total
    for call in calls:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await bounded(call.initial_metadata())
        if call.done():
            code = await call.code()
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            refused_streams += 1
    stats = server.stats()
    assert stats["refused_overload"] == refused_streams
    assert refused_streams == len(calls) - (64 - 1)  # the peer's own stream holds a slot
    print(
        f"\nflood: {attempted} connections in {time.monotonic() - started:.1f}s, "
        f"{refused_streams} Exchange streams refused (RESOURCE_EXHAUSTED), peer latency "
        f"max {max(latencies) * 1000:.0f} ms"
    )

    # Sockets that never complete a handshake are dropped by the server (handshake_timeout).
    async def closed_by_server(writer: asyncio.StreamWriter) -> bool:
        reader = writer.transport.get_protocol()._stream_reader  # type: ignore[attr-defined]
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
        return True

    silent = sockets[::3]  # kind 0: connected, never spoke
    results = await asyncio.wait_for(
        asyncio.gather(*(closed_by_server(w) for w in silent)), limits.handshake_timeout + 10
    )
    assert all(results)
    for writer in sockets:
        writer.transport.abort()
    for call in calls:
        call.cancel()
    assert (await ask(peer, server, b"after")).payload == b"after"
    assert peer.stats()["stream_failures"] == 0


async def test_ping_flood_gets_goaway(
    transports: Factory, channels: Callable[..., grpc.aio.Channel]
) -> None:
    server = await transports(limits=TransportLimits())  # peers ping every 10 s at most
    flooder = channels(
        server.address,
        **{
            "grpc.keepalive_time_ms": 50,
            "grpc.keepalive_permit_without_calls": 1,
            "grpc.http2.max_pings_without_data": 0,
        },
    )
    call = exchange(flooder)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await bounded(call.read())
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "too many pings" in (info.value.details() or "").lower()


# -- configuration -----------------------------------------------------------------------------


def test_server_options_enforce_the_limits() -> None:
    limits = TransportLimits(
        max_concurrent_streams=7, handshake_timeout=3.0, max_connection_age=600.0
    )
    options = dict(server_options(limits))
    assert options["grpc.max_concurrent_streams"] == 7
    assert options["grpc.server_handshake_timeout_ms"] == 3000
    assert options["grpc.http2.min_recv_ping_interval_without_data_ms"] == 5000
    assert options["grpc.http2.max_ping_strikes"] == 2
    assert options["grpc.max_connection_idle_ms"] == 600_000
    assert options["grpc.max_connection_age_ms"] == 600_000
    assert "grpc.max_connection_age_ms" not in dict(server_options(TransportLimits()))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_inbound_streams", 0),
        ("max_inbound_pending_bytes", -1),
        ("max_request_timeout", 0.0),
        ("max_request_timeout", float("nan")),
        ("max_connection_idle", 0.0),
        ("max_message_bytes", 10),
    ],
)
def test_impossible_limits_are_refused(field: str, value: Any) -> None:
    with pytest.raises(InvalidArgumentError, match=field):
        GrpcTransport("127.0.0.1:1", limits=TransportLimits(**{field: value}))
