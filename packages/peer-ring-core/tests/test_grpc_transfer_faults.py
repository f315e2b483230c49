"""Transfers on real gRPC against peers that break the contract, and a closing transport.

A plain ``grpc.aio`` server (no peer-ring code) answers the ``Transfer`` RPC with bytes
that are not a ``TransferChunk``; a plain ``grpc.aio`` client sends the real transport a
request that is not a ``TransferRequest``. Both sides must fail with a typed error or
status, count the malformed input and serve on. A transfer cut by the caller's own
``close()`` raises ``NotRunningError``, and a failing reachability listener does not
stop the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
import grpc.aio
import pytest

from peer_ring.core._errors import NotRunningError, PeerUnavailableError, RemoteError
from peer_ring.core._types import Request, Response, Status, TransferRequest
from peer_ring.core.testing import free_port
from peer_ring.core.transport import GrpcTransport, TransportLimits
from peer_ring.core.transport._codec import transfer_chunks
from peer_ring.core.transport._options import TRANSFER_PATH

LIMIT = 15.0  # real seconds; only reached on a bug
FAST = TransportLimits(backoff_initial=0.02, backoff_max=0.2, connect_timeout=2.0)
REQUEST = TransferRequest("t", 1, ())


def echo(sender: str, request: Request) -> Response:
    return Response(Status.OK, request.payload)


async def one_record(sender: str, request: TransferRequest) -> AsyncIterator[list[bytes]]:
    yield [b"record"]


async def bounded(aw: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(aw, LIMIT)


@pytest.fixture
async def transports() -> AsyncIterator[list[GrpcTransport]]:
    made: list[GrpcTransport] = []
    for i in (1, 2):
        host = f"127.0.0.{i}"
        transport = GrpcTransport(f"{host}:{free_port(host)}", limits=FAST)
        await transport.start(echo, one_record)
        made.append(transport)
    yield made
    await asyncio.gather(*(t.close() for t in made))


def fake_peer(answer: Any) -> tuple[grpc.aio.Server, str]:
    """A gRPC server whose Transfer handler is ``answer`` (an async generator function)."""
    service, method = TRANSFER_PATH.strip("/").rsplit("/", 1)
    handler = grpc.method_handlers_generic_handler(
        service,
        {
            method: grpc.unary_stream_rpc_method_handler(
                answer, request_deserializer=None, response_serializer=None
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    address = f"127.0.0.3:{free_port('127.0.0.3')}"
    server.add_insecure_port(address)
    return server, address


async def pull(transport: GrpcTransport, peer: str) -> list[list[bytes]]:
    async def run() -> list[list[bytes]]:
        return [chunk async for chunk in transport.transfer(peer, REQUEST, 5.0)]

    result: list[list[bytes]] = await bounded(run())
    return result


async def test_a_malformed_transfer_chunk_is_a_remote_error_and_counted(
    transports: list[GrpcTransport],
) -> None:
    a, b = transports
    (good,) = transfer_chunks([b"fine"], 1 << 20)

    async def answer(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield b""  # an empty chunk: no records, skipped
        yield good
        yield b"\xff\xff\xff\xff not a chunk"

    server, peer = fake_peer(answer)
    await server.start()
    try:
        got: list[list[bytes]] = []
        with pytest.raises(RemoteError, match=f"malformed transfer chunk from {peer}"):
            async for chunk in a.transfer(peer, REQUEST, 5.0):
                got.append(chunk)
        assert got == [[b"fine"]]
        assert a.stats()["malformed_frames"] == 1
        assert await pull(a, b.address) == [[b"record"]]  # serves on
    finally:
        await server.stop(None)


async def test_a_malformed_transfer_request_is_refused_as_invalid_and_counted(
    transports: list[GrpcTransport],
) -> None:
    a, b = transports
    async with grpc.aio.insecure_channel(b.address) as channel:
        call = channel.unary_stream(
            TRANSFER_PATH, request_serializer=None, response_deserializer=None
        )(b"\xff\xff\xff\xff not a request", metadata=(("x-peer-ring-sender", a.address),))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed request" in (info.value.details() or "")
    assert b.stats()["malformed_frames"] == 1
    assert await pull(a, b.address) == [[b"record"]]


async def test_a_transfer_cut_by_close_is_not_running(transports: list[GrpcTransport]) -> None:
    a, _ = transports
    first = asyncio.Event()
    (chunk,) = transfer_chunks([b"x"], 1 << 20)

    async def answer(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield chunk
        await asyncio.get_running_loop().create_future()  # then silence

    server, peer = fake_peer(answer)
    await server.start()
    try:

        async def run() -> None:
            async for _ in a.transfer(peer, REQUEST, 30.0):
                first.set()

        # The caller cancelling its own transfer still gets its cancellation.
        task = asyncio.ensure_future(run())
        await bounded(first.wait())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await bounded(task)
        first.clear()
        task = asyncio.ensure_future(run())
        await bounded(first.wait())
        await a.close()
        with pytest.raises(NotRunningError):
            await bounded(task)
        with pytest.raises(NotRunningError):
            await pull(a, peer)
        with pytest.raises(NotRunningError):
            await a.connect(peer)
    finally:
        await server.stop(None)


async def test_a_failing_reachability_listener_does_not_stop_the_others(
    transports: list[GrpcTransport], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = transports
    seen: list[tuple[str, bool]] = []

    def broken(peer: str, reachable: bool) -> None:
        raise RuntimeError("listener bug")

    a.add_reachability_listener(broken)
    a.add_reachability_listener(lambda peer, up: seen.append((peer, up)))
    a.forget_peer("never-seen:1")  # nothing to forget: no error
    with caplog.at_level(logging.ERROR, logger="peer_ring.core.transport._grpc"):
        await bounded(b.close())
        with pytest.raises(PeerUnavailableError):
            await bounded(a.request(b.address, Request("t", "echo", b"k", b"", 0, "", 1.0)))
        await bounded(_until(lambda: (b.address, False) in seen))
    assert any("reachability listener failed" in r.getMessage() for r in caplog.records)


async def _until(condition: Any) -> None:
    # Listener calls have no event of their own; bounded by the caller.
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(0.01)
