"""What the serving side of a stream sends back for odd handler results, over real TCP.

The inbound stream (shared by the gRPC and TCP transports) must turn whatever a handler
hands it into one well-formed answer: a huge error text is cut (it often quotes the
request), a result that is not a ``Response`` or cannot be encoded becomes an error, and
a request's deadline is clamped to the receiver's ``max_request_timeout``. The stream
survives each case.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from peer_ring.core._types import Request, Response, Status, TransferRequest
from peer_ring.core.testing import free_port
from peer_ring.core.transport import TcpTransport, TransportLimits
from peer_ring.core.transport._inbound import MAX_ERROR_CHARS

LIMIT = 15.0
FAST = TransportLimits(backoff_initial=0.02, backoff_max=0.2, connect_timeout=2.0)


async def no_transfer(sender: str, request: TransferRequest) -> AsyncIterator[list[bytes]]:
    return
    yield


Handler = Callable[[str, Request], Any]


@pytest.fixture
async def pair() -> AsyncIterator[Callable[..., Awaitable[tuple[TcpTransport, TcpTransport]]]]:
    made: list[TcpTransport] = []

    async def make(
        handler: Handler, limits: TransportLimits = FAST
    ) -> tuple[TcpTransport, TcpTransport]:
        server = TcpTransport(f"127.0.0.1:{free_port()}", limits=limits)
        client = TcpTransport(f"127.0.0.1:{free_port()}", limits=FAST)
        made.extend((server, client))
        await server.start(handler, no_transfer)
        await client.start(lambda s, r: Response(Status.OK, b""), no_transfer)
        return server, client

    yield make
    await asyncio.gather(*(t.close() for t in made))


async def ask(
    client: TcpTransport, server: TcpTransport, command: str, timeout: float = 5.0
) -> Response:
    request = Request("t", command, b"k", b"", 0, "", timeout)
    return await asyncio.wait_for(client.request(server.address, request), LIMIT)


def scripted(request: Request) -> Any:
    if request.command == "huge-error":
        return Response(Status.ERROR, b"", "x" * 100_000)
    if request.command == "error-object":
        return Response(Status.ERROR, b"", ValueError("not a str"))  # type: ignore[arg-type]
    if request.command == "not-a-response":
        return b"raw bytes"
    if request.command == "bad-payload":
        return Response(Status.OK, "text, not bytes")  # type: ignore[arg-type]
    return Response(Status.OK, b"fine")


async def test_odd_results_become_well_formed_answers_and_the_stream_survives(pair: Any) -> None:
    server, client = await pair(lambda sender, request: scripted(request))
    huge = await ask(client, server, "huge-error")
    assert huge.status is Status.ERROR
    assert len(huge.error) <= MAX_ERROR_CHARS
    assert huge.error.startswith("x" * 100) and huge.error.endswith(" more characters)")
    assert f"({100_000 - (MAX_ERROR_CHARS - 40)} more characters)" in huge.error
    as_text = await ask(client, server, "error-object")
    assert (as_text.status, as_text.error) == (Status.ERROR, "not a str")
    wrong = await ask(client, server, "not-a-response")
    assert wrong.status is Status.ERROR and "handler returned bytes, not a Response" in wrong.error
    unencodable = await ask(client, server, "bad-payload")
    assert unencodable.status is Status.ERROR and unencodable.error
    assert (await ask(client, server, "ok")).payload == b"fine"
    assert client.stats()["stream_failures"] == 0


async def test_coroutine_results_get_the_same_treatment(pair: Any) -> None:
    async def later(sender: str, request: Request) -> Any:
        await asyncio.sleep(0)
        return scripted(request)

    server, client = await pair(later)
    wrong = await ask(client, server, "not-a-response")
    assert wrong.status is Status.ERROR and "not a Response" in wrong.error
    assert (await ask(client, server, "ok")).payload == b"fine"


async def test_a_request_deadline_is_clamped_to_the_receivers_bound(pair: Any) -> None:
    seen: list[float] = []

    def record(sender: str, request: Request) -> Response:
        seen.append(request.timeout)
        return Response(Status.OK, b"")

    limits = TransportLimits(
        backoff_initial=0.02, connect_timeout=2.0, default_timeout=2.0, max_request_timeout=3.0
    )
    server, client = await pair(record, limits)
    await ask(client, server, "long", timeout=10.0)
    await ask(client, server, "short", timeout=0.25)
    assert seen == [3.0, 0.25]
