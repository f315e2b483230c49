"""Error path on real gRPC: a peer answering with a malformed response frame.

A fake peer (a plain ``grpc.aio`` server on loopback, no peer-ring code) accepts the
Exchange stream and answers the first frame with bytes that are not a ``Frame``. The
caller's request must fail with a typed error (not hang, not crash the transport), the
malformed frame is counted, and the transport keeps serving other peers both ways.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
import grpc.aio
import pytest

from peer_ring.core._errors import PeerRingError
from peer_ring.core._types import Request, Response, Status, TransferRequest
from peer_ring.core.testing import free_port
from peer_ring.core.transport import GrpcTransport, TransportLimits
from peer_ring.core.transport._options import ACCEPTED_KEY, EXCHANGE_PATH

LIMIT = 15.0  # real seconds; only reached on a bug
FAST = TransportLimits(backoff_initial=0.02, backoff_max=0.2, connect_timeout=2.0)


def echo(sender: str, request: Request) -> Response:
    return Response(Status.OK, request.payload)


async def no_transfer(sender: str, request: TransferRequest) -> AsyncIterator[list[bytes]]:
    raise NotImplementedError
    yield []  # pragma: no cover - makes this an async generator


async def bounded(aw: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(aw, LIMIT)


@pytest.fixture
async def garbage_peer() -> AsyncIterator[str]:
    """A gRPC server that answers the first Exchange frame with a malformed frame."""

    async def exchange(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        # Headers first (the caller waits for them before it sends), then the first
        # request frame is answered with garbage.
        await context.send_initial_metadata(((ACCEPTED_KEY, "1"),))
        async for _ in requests:
            yield b"\xff\xff\xff\xff not a frame"
            await asyncio.get_running_loop().create_future()  # then silence

    handler = grpc.method_handlers_generic_handler(
        EXCHANGE_PATH.strip("/").rsplit("/", 1)[0],
        {
            EXCHANGE_PATH.rsplit("/", 1)[1]: grpc.stream_stream_rpc_method_handler(
                exchange, request_deserializer=None, response_serializer=None
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    address = f"127.0.0.3:{free_port('127.0.0.3')}"
    server.add_insecure_port(address)
    await server.start()
    yield address
    await server.stop(None)


async def test_a_malformed_response_frame_fails_the_request_typed_and_the_node_keeps_serving(
    garbage_peer: str,
) -> None:
    a = GrpcTransport(f"127.0.0.1:{free_port('127.0.0.1')}", limits=FAST)
    b = GrpcTransport(f"127.0.0.2:{free_port('127.0.0.2')}", limits=FAST)
    await a.start(echo, no_transfer)
    await b.start(echo, no_transfer)
    try:
        req = Request("kv", "get", b"k", b"x", 1, "", 2.0)
        with pytest.raises(PeerRingError) as info:
            await bounded(a.request(garbage_peer, req))
        assert "malformed" in str(info.value)
        assert a.stats()["malformed_frames"] == 1
        # the transport still serves, to and from a real peer
        assert (await bounded(a.request(b.address, req))).payload == b"x"
        assert (await bounded(b.request(a.address, req))).payload == b"x"
    finally:
        await asyncio.gather(a.close(), b.close())
