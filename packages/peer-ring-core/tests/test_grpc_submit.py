"""``GrpcTransport.submit``: a request sent by its fields, straight to the peer connection
(no :class:`Request` object, no detour through ``request()``), over real gRPC on loopback.
Every wait is bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from peer_ring.core._errors import NotRunningError
from peer_ring.core._types import Response, Status
from peer_ring.core.transport import GrpcTransport

#: Upper bound of any single wait in these tests (real seconds). Only reached on a bug.
LIMIT = 15.0

NodeFactory = Callable[..., Awaitable[Any]]


@pytest.fixture
def transport_kind() -> str:
    """These tests are about gRPC (overrides the parametrized fixture of conftest.py)."""
    return "grpc"


class Owner:
    """Records what the transport tells it; ``done`` is set after ``expect`` outcomes."""

    def __init__(self, expect: int = 1) -> None:
        self.expect = expect
        self.seen: list[tuple[str, str, object]] = []
        self.done = asyncio.Event()

    def _record(self, target: str, hint: str, outcome: object) -> None:
        self.seen.append((target, hint, outcome))
        if len(self.seen) >= self.expect:
            self.done.set()

    def answered(self, target: str, hint: str, payload: bytes) -> None:
        self._record(target, hint, payload)

    def on_response(self, target: str, hint: str, response: Response) -> None:
        self._record(target, hint, response)

    def on_done(self, target: str, hint: str, fut: asyncio.Future[Response]) -> None:
        self._record(target, hint, fut.exception() if not fut.cancelled() else "cancelled")


def refuse_some(sender: str, request: Any) -> Response:
    if request.command == "refuse":
        return Response(Status.INVALID_ARGUMENT, b"", "refused")
    return Response(Status.OK, b"re:" + request.payload)


async def test_submit_goes_straight_to_the_connection(
    nodes: NodeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = await nodes()
    b = await nodes(handler=refuse_some)

    def no_request(*args: object) -> None:
        raise AssertionError("submit must not go through request()")

    monkeypatch.setattr(a.transport, "request", no_request)
    owner = Owner(expect=2)
    a.transport.submit(b.address, owner, "h:1", "t", "e", b"k", b"x", 3, 5.0)
    a.transport.submit(b.address, owner, "h:2", "t", "refuse", b"k", b"", 3, 5.0)
    await asyncio.wait_for(owner.done.wait(), LIMIT)
    by_hint = {hint: outcome for _target, hint, outcome in owner.seen}
    assert by_hint["h:1"] == b"re:x"
    refused = by_hint["h:2"]
    assert isinstance(refused, Response) and refused.status is Status.INVALID_ARGUMENT


async def test_submit_to_a_transport_not_running_tells_the_owner_through_the_loop() -> None:
    a = GrpcTransport("127.0.0.1:0")
    owner = Owner()
    a.submit("127.0.0.1:1", owner, "h", "t", "e", b"k", b"", 0, 1.0)
    assert owner.seen == []  # not from inside submit()
    await asyncio.wait_for(owner.done.wait(), LIMIT)
    [(target, hint, outcome)] = owner.seen
    assert (target, hint) == ("127.0.0.1:1", "h")
    assert isinstance(outcome, NotRunningError)
