"""A request's owner is told of its outcome directly (``OutboundCall.owner``, issue 23
rounds 4 and 5), over both real transports that use it (TCP and gRPC).

A success reaches ``owner.answered(peer, hint, payload)`` and an error status
``owner.on_response(peer, hint, response)`` from the connection's reader, in the same loop
turn, and the call is left unresolved (nobody else holds it); a failure (timeout,
unreachable peer, shutdown) or a cancellation reaches ``owner.on_done(peer, hint, call)``
through the loop, exactly once; an owner that raises harms neither the reader nor the
other answers of the frame. ``Transport.submit`` sends a request by its fields to an owner
(the TCP transport without a ``Request`` object, the others through ``request``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable

import pytest

from peer_ring.core._errors import PeerUnavailableError, RequestTimeoutError, UnknownCommandError
from peer_ring.core._types import Request, Response, Status, TransferRequest
from peer_ring.core.testing import free_port
from peer_ring.core.transport import GrpcTransport, TcpTransport, Transport, TransportLimits
from peer_ring.core.transport._outbound import OutboundCall

LIMIT = 15.0
FAST = TransportLimits(backoff_initial=0.02, backoff_max=0.2, connect_timeout=2.0)


async def no_transfer(sender: str, request: TransferRequest) -> AsyncIterator[list[bytes]]:
    raise UnknownCommandError("no transfers here")
    yield []  # pragma: no cover - makes this an async generator


def serve(sender: str, request: Request) -> Response | Awaitable[Response]:
    if request.command == "hang":
        return asyncio.get_running_loop().create_future()  # never answered
    if request.command == "refuse":
        return Response(Status.INVALID_ARGUMENT, b"", "refused: " + request.hint)
    return Response(Status.OK, b"re:" + request.payload)


class Owner:
    """Records what its calls report; ``done`` is set once ``expect`` outcomes arrived."""

    def __init__(self, fail_on: bytes = b"", expect: int = 1) -> None:
        self.seen: list[tuple[str, str, bool, Response | BaseException | None]] = []
        self.fail_on = fail_on
        self.expect = expect
        self.done = asyncio.Event()
        self.calls: list[OutboundCall] = []

    def _record(self, outcome: tuple[str, str, bool, Response | BaseException | None]) -> None:
        self.seen.append(outcome)
        if len(self.seen) >= self.expect:
            self.done.set()

    def answered(self, target: str, hint: str, payload: bytes) -> None:
        # The call is not resolved: the owner is the only one told. (A failed assert here
        # is caught and logged by the reader: the answer is then never recorded and the
        # test's wait for ``done`` fails.)
        assert not any(c.done() for c in self.calls)
        self._record((target, hint, False, Response(Status.OK, payload, "")))
        if payload == b"re:" + self.fail_on:
            raise RuntimeError("the owner broke")

    def on_response(self, target: str, hint: str, response: Response) -> None:
        assert response.status is not Status.OK
        self._record((target, hint, False, response))

    def on_done(self, target: str, hint: str, fut: asyncio.Future[Response]) -> None:
        assert fut.done()
        outcome: Response | BaseException | None = None
        if not fut.cancelled():
            outcome = fut.exception()
            assert outcome is not None  # answers come through answered()
        self._record((target, hint, fut.cancelled(), outcome))


def own(fut: asyncio.Future[Response], owner: Owner, hint: str) -> OutboundCall:
    assert type(fut) is OutboundCall and not fut.done()
    fut.owner = owner
    fut.hint = hint
    owner.calls.append(fut)
    return fut


def make(kind: str, limits: TransportLimits = FAST) -> Transport:
    address = f"127.0.0.1:{free_port('127.0.0.1')}"
    if kind == "tcp":
        return TcpTransport(address, limits=limits)
    return GrpcTransport(address, limits=limits)


@pytest.fixture(params=["tcp", "grpc"])
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Transport, Transport]]:
    a, b = make(request.param), make(request.param)
    await a.start(serve, no_transfer)
    await b.start(serve, no_transfer)
    yield a, b
    await a.close()
    await b.close()


async def test_the_answer_reaches_the_owner_in_the_readers_turn(
    pair: tuple[Transport, Transport],
) -> None:
    a, b = pair
    await asyncio.wait_for(a.request(b.address, Request("t", "e", b"k", b"warm")), LIMIT)
    owner = Owner()
    call = own(a.request(b.address, Request("t", "e", b"k", b"x")), owner, "h:1")
    await asyncio.wait_for(owner.done.wait(), LIMIT)
    assert owner.seen == [(b.address, "h:1", False, Response(Status.OK, b"re:x", ""))]
    assert call.owner is None  # delivered once, then forgotten
    await asyncio.sleep(0)
    assert len(owner.seen) == 1


async def test_an_owner_that_raises_does_not_cost_the_other_answers(
    pair: tuple[Transport, Transport], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = pair
    await asyncio.wait_for(a.request(b.address, Request("t", "e", b"k", b"warm")), LIMIT)
    owner = Owner(fail_on=b"1", expect=4)
    # Queued in one loop turn: they leave in one frame and come back in one or two.
    calls = [
        own(a.request(b.address, Request("t", "e", b"k", b"%d" % i)), owner, "") for i in range(4)
    ]
    with caplog.at_level(logging.ERROR, logger="peer_ring.core.transport._outbound"):
        await asyncio.wait_for(owner.done.wait(), LIMIT)
    assert sorted(o.payload for _, _, _, o in owner.seen) == [b"re:0", b"re:1", b"re:2", b"re:3"]  # type: ignore[union-attr]
    assert not any(c.done() for c in calls)  # answered calls stay unresolved
    assert "failed on its answer" in caplog.text
    # The connection still works.
    resp = await asyncio.wait_for(a.request(b.address, Request("t", "e", b"k", b"after")), LIMIT)
    assert resp.payload == b"re:after"


async def test_a_timeout_reaches_the_owner_once_through_the_loop() -> None:
    a = make("tcp", TransportLimits(backoff_initial=0.02, backoff_max=0.2, connect_timeout=2.0))
    b = make("tcp")
    await a.start(serve, no_transfer)
    await b.start(serve, no_transfer)
    try:
        owner = Owner()
        call = own(a.request(b.address, Request("t", "hang", b"k", b"", timeout=0.05)), owner, "")
        await asyncio.wait_for(owner.done.wait(), LIMIT)
        (target, _, cancelled, outcome) = owner.seen[0]
        assert (target, cancelled) == (b.address, False)
        assert isinstance(outcome, RequestTimeoutError)
        assert call.done()
        await asyncio.sleep(0.05)
        assert len(owner.seen) == 1
    finally:
        await a.close()
        await b.close()


async def test_shutdown_and_cancellation_reach_the_owner_through_the_loop() -> None:
    hung: list[Request] = []
    both_arrived = asyncio.Event()

    def serve_and_count(sender: str, request: Request) -> Response | Awaitable[Response]:
        if request.command == "hang":
            hung.append(request)
            if len(hung) == 2:
                both_arrived.set()
        return serve(sender, request)

    a, b = make("tcp"), make("tcp")
    await a.start(serve, no_transfer)
    await b.start(serve_and_count, no_transfer)
    try:
        await asyncio.wait_for(a.request(b.address, Request("t", "e", b"k", b"warm")), LIMIT)
        cancelled_owner, shut_owner = Owner(), Owner()
        to_cancel = own(a.request(b.address, Request("t", "hang", b"k", b"")), cancelled_owner, "")
        to_fail = own(a.request(b.address, Request("t", "hang", b"k", b"")), shut_owner, "h")
        await asyncio.wait_for(both_arrived.wait(), LIMIT)  # both written and being served
        assert to_cancel.cancel()
        assert cancelled_owner.seen == []  # not from inside cancel(): in a later turn
        await asyncio.wait_for(cancelled_owner.done.wait(), LIMIT)
        assert cancelled_owner.seen == [(b.address, "", True, None)]
        await a.close()  # fails the pending call (the owner hears of it in a later turn)
        await asyncio.wait_for(shut_owner.done.wait(), LIMIT)
        assert len(shut_owner.seen) == 1
        target, hint, _, outcome = shut_owner.seen[0]
        assert (target, hint) == (b.address, "h")
        assert isinstance(outcome, BaseException)
        assert to_fail.done()
    finally:
        await a.close()
        await b.close()


async def test_an_unreachable_peer_fails_the_owned_call_through_the_loop() -> None:
    a = make("tcp")
    await a.start(serve, no_transfer)
    dead = f"127.0.0.1:{free_port('127.0.0.1')}"
    try:
        owner = Owner()
        # A first request to a peer is queued while the connection is being dialled (only a
        # peer already marked down fails at once, with a plain future nothing can own).
        call = own(a.request(dead, Request("t", "e", b"k", b"")), owner, "")
        await asyncio.wait_for(owner.done.wait(), LIMIT)
        [(target, hint, cancelled, outcome)] = owner.seen
        assert (target, hint, cancelled) == (dead, "", False)
        assert isinstance(outcome, PeerUnavailableError)
        assert call.done()
    finally:
        await a.close()


async def test_submit_sends_by_fields_and_reports_each_outcome_to_the_owner(
    pair: tuple[Transport, Transport],
) -> None:
    a, b = pair
    await asyncio.wait_for(a.request(b.address, Request("t", "e", b"k", b"warm")), LIMIT)
    owner = Owner(expect=2)
    a.submit(b.address, owner, "h:2", "t", "e", b"k", b"y", 3, 5.0)
    a.submit(b.address, owner, "h:3", "t", "refuse", b"k", b"", 3, 5.0)
    await asyncio.wait_for(owner.done.wait(), LIMIT)
    assert sorted(owner.seen, key=lambda s: s[1]) == [
        (b.address, "h:2", False, Response(Status.OK, b"re:y", "")),
        (b.address, "h:3", False, Response(Status.INVALID_ARGUMENT, b"", "refused: h:3")),
    ]


async def test_submit_to_a_transport_not_running_tells_the_owner_through_the_loop() -> None:
    a = make("tcp")
    owner = Owner()
    a.submit("127.0.0.1:1", owner, "h", "t", "e", b"k", b"", 0, 1.0)
    assert owner.seen == []  # not from inside submit()
    await asyncio.wait_for(owner.done.wait(), LIMIT)
    [(target, hint, cancelled, outcome)] = owner.seen
    assert (target, hint, cancelled) == ("127.0.0.1:1", "h", False)
    assert isinstance(outcome, BaseException)
