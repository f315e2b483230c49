"""The inbound reader's fields form (issue 23, round 5), over real TCP and gRPC.

An inbound handler with a ``dispatch`` method (the node's dispatcher) is called with the
decoded fields, no ``Request`` object, and may answer a success with the payload's bytes
(no ``Response``). A plain handler function still gets a ``Request`` and must answer a
``Response``. Both shapes must produce the same answers on the wire, for every outcome.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest

from peer_ring.core._types import Request, Response, Status, TransferRequest
from peer_ring.core.testing import free_port
from peer_ring.core.transport import GrpcTransport, TcpTransport, TransportLimits

LIMIT = 15.0
FAST = TransportLimits(backoff_initial=0.02, backoff_max=0.2, connect_timeout=2.0)


async def no_transfer(sender: str, request: TransferRequest) -> AsyncIterator[list[bytes]]:
    return
    yield


class FieldsHandler:
    """Answers by command name; records how it was called."""

    def __init__(self) -> None:
        self.fields_calls: list[tuple[Any, ...]] = []
        self.request_calls = 0

    def __call__(self, source: str, request: Request) -> Any:
        self.request_calls += 1
        return Response(Status.OK, b"via request")

    def dispatch(
        self,
        source: str,
        namespace: str,
        command: str,
        key: bytes,
        payload: bytes,
        partition: int,
        hint: str,
        timeout: float,
        inbound: bool = False,
    ) -> Any:
        self.fields_calls.append(
            (source, namespace, command, key, payload, partition, hint, timeout, inbound)
        )
        if command == "bytes":
            return payload + b"!"
        if command == "error":
            return Response(Status.INVALID_ARGUMENT, b"", "bad key")
        if command == "slow":
            return self._later(payload)
        if command == "huge":
            return b"x" * 70_000
        if command == "raise":
            raise ValueError("handler bug")
        return Response(Status.OK, b"as response")

    async def _later(self, payload: bytes) -> Response:
        await asyncio.sleep(0)
        return Response(Status.OK, payload * 2)


@pytest.fixture(params=["tcp", "grpc"])
async def make_pair(request: Any) -> AsyncIterator[Any]:
    made: list[Any] = []
    kind = request.param

    async def make(handler: Any, limits: TransportLimits = FAST) -> tuple[Any, Any]:
        cls = TcpTransport if kind == "tcp" else GrpcTransport
        server = cls(f"127.0.0.1:{free_port()}", limits=limits)
        client = cls(f"127.0.0.1:{free_port()}", limits=FAST)
        made.extend((server, client))
        await server.start(handler, no_transfer)
        await client.start(lambda s, r: Response(Status.OK, b""), no_transfer)
        return server, client

    yield make
    await asyncio.gather(*(t.close() for t in made))


def ask(client: Any, server: Any, command: str, payload: bytes = b"p") -> Awaitable[Response]:
    request = Request("ns", command, b"key", payload, 7, "hint:1", 2.5)
    return asyncio.wait_for(client.request(server.address, request), LIMIT)


async def test_a_dispatch_method_gets_the_fields_and_may_answer_bytes(make_pair: Any) -> None:
    handler = FieldsHandler()
    server, client = await make_pair(handler)
    answer = await ask(client, server, "bytes", b"abc")
    assert (answer.status, answer.payload, answer.error) == (Status.OK, b"abc!", "")
    assert handler.request_calls == 0
    (call,) = handler.fields_calls
    assert call == (client.address, "ns", "bytes", b"key", b"abc", 7, "hint:1", 2.5, True)
    error = await ask(client, server, "error")
    assert (error.status, error.error) == (Status.INVALID_ARGUMENT, "bad key")
    assert (await ask(client, server, "slow", b"ab")).payload == b"abab"
    assert (await ask(client, server, "other")).payload == b"as response"
    raised = await ask(client, server, "raise")
    assert raised.status is Status.ERROR and "handler bug" in raised.error
    assert handler.request_calls == 0


async def test_bytes_over_the_message_limit_become_too_large(make_pair: Any) -> None:
    handler = FieldsHandler()
    limits = TransportLimits(
        backoff_initial=0.02, backoff_max=0.2, connect_timeout=2.0, max_message_bytes=65_536
    )
    server, client = await make_pair(handler, limits)
    answer = await ask(client, server, "huge")
    assert answer.status is Status.TOO_LARGE
    assert (await ask(client, server, "bytes", b"z")).payload == b"z!"  # the stream survived


async def test_a_plain_function_still_gets_a_request(make_pair: Any) -> None:
    seen: list[Request] = []

    def plain(source: str, request: Request) -> Response:
        seen.append(request)
        return Response(Status.OK, request.payload)

    server, client = await make_pair(plain)
    assert (await ask(client, server, "x", b"q")).payload == b"q"
    assert seen == [Request("ns", "x", b"key", b"q", 7, "hint:1", 2.5)]
