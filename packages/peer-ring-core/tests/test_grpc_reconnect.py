"""A peer that starts after us is reached as soon as it connects to us, not after our
reconnect backoff ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from peer_ring.core import PeerUnavailableError, Request, Response, Status, TransferRequest
from peer_ring.core.testing import free_port
from peer_ring.core.transport import GrpcTransport, TransportLimits

# A backoff far longer than the test may take: only the early retry can make it pass.
SLOW_BACKOFF = TransportLimits(backoff_initial=30.0, backoff_max=30.0, connect_timeout=1.0)


def echo(sender: str, request: Request) -> Response:
    return Response(Status.OK, request.payload, "")


async def no_transfer(sender: str, request: TransferRequest) -> AsyncIterator[list[bytes]]:
    return
    yield []


async def test_inbound_stream_cuts_the_reconnect_backoff_short() -> None:
    a_addr = f"127.0.0.1:{free_port()}"
    b_addr = f"127.0.0.1:{free_port()}"
    a = GrpcTransport(a_addr, limits=SLOW_BACKOFF)
    b = GrpcTransport(b_addr, limits=SLOW_BACKOFF)
    await a.start(echo, no_transfer)
    try:
        # b is not listening yet: a's connection fails and enters a 30 s backoff.
        with pytest.raises(PeerUnavailableError):
            await a.request(b_addr, Request("t", "echo", b"k", b"early", 0, "", 2.0))
        with pytest.raises(PeerUnavailableError):  # still in backoff: fails fast
            await a.request(b_addr, Request("t", "echo", b"k", b"early", 0, "", 2.0))
        await b.start(echo, no_transfer)
        # b talks to a first (as a starting node does during its initial sync)...
        response = await b.request(a_addr, Request("t", "echo", b"k", b"hello", 0, "", 2.0))
        assert response.payload == b"hello"
        # ...which tells a that b is up: a reconnects at once, long before its backoff ends.
        deadline = asyncio.get_running_loop().time() + 10.0
        while True:
            try:
                response = await a.request(b_addr, Request("t", "echo", b"k", b"late", 0, "", 2.0))
                break
            except PeerUnavailableError:
                assert asyncio.get_running_loop().time() < deadline, "still backing off"
                await asyncio.sleep(0.05)
        assert response.payload == b"late"
    finally:
        await a.close()
        await b.close()
