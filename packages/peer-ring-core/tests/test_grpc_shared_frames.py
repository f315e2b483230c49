"""Shared frames of the gRPC transport (``transport._grpc_shared``), over real gRPC on loopback.

A node's answers to a peer ride on its own Exchange stream to that peer, in the frames of
its requests, once the peer's server agreed (call metadata offer, echoed in the initial
metadata). What must hold: every request is answered exactly once whichever path its answer
takes; nothing changes with a peer that does not offer or accept them (an older node);
answers go on the server side of the asker's stream while the answerer's own stream is
missing or over its budget; answers in the frames of a stream that did not negotiate are
ignored; a backpressure pause on both sides at once does not wedge the pair.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import pytest

from peer_ring.core._errors import PeerUnavailableError
from peer_ring.core._types import Request, Response, Status
from peer_ring.core.proto import peer_ring_pb2 as pb
from peer_ring.core.transport import GrpcTransport, TransportLimits
from peer_ring.core.transport._grpc_shared import CARRY_BUDGET_SHARE
from peer_ring.core.transport._options import (
    ACCEPTED_KEY,
    EXCHANGE_PATH,
    SENDER_KEY,
    SHARED_FRAMES_KEY,
)

#: Upper bound of any single wait in these tests (real seconds). Only reached on a bug.
LIMIT = 15.0

LIMITS = TransportLimits(backoff_initial=0.02, backoff_max=0.2, connect_timeout=2.0)

NodeFactory = Callable[..., Awaitable[Any]]


@pytest.fixture
def transport_kind() -> str:
    """Shared frames are the gRPC transport's (overrides the parametrized conftest fixture)."""
    return "grpc"


@pytest.fixture
async def channels() -> AsyncIterator[Callable[[str], grpc.aio.Channel]]:
    """Raw client channels (a hand-made client); closed at the end."""
    made: list[grpc.aio.Channel] = []

    def make(address: str) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(address)
        made.append(channel)
        return channel

    yield make
    await asyncio.gather(*(c.close(None) for c in made))


async def bounded(aw: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(aw, LIMIT)


async def linked(*pairs: tuple[Any, Any]) -> None:
    """Each ``(a, b)``: a's stream to b is up and its writer knows whether b agreed."""
    for a, b in pairs:
        await bounded(a.transport.connect(b.address))
        conn = a.transport._peers[b.address]

        async def writer_started(conn: Any = conn) -> None:
            # Internal state with no event of its own: a few loop turns after connect().
            while conn._stream is None or not conn._writer_idle:  # noqa: ASYNC110
                await asyncio.sleep(0)

        await bounded(writer_started())


def carrying(a: Any, b: Any) -> bool:
    return bool(a.transport._peers[b.address].carrying)


class Gate:
    """A handler that answers at once, except ``key=b"slow"``: it waits for :attr:`open`."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.arrived = asyncio.Event()

    def __call__(self, sender: str, request: Request) -> Response | Awaitable[Response]:
        if request.key == b"slow":
            return self._slow(request)
        return Response(Status.OK, request.payload)

    async def _slow(self, request: Request) -> Response:
        self.arrived.set()
        await self.open.wait()
        return Response(Status.OK, request.payload)


async def test_answers_ride_on_the_answerers_own_stream(nodes: NodeFactory) -> None:
    a, b = await nodes(), await nodes()
    await linked((a, b), (b, a))
    assert carrying(a, b) and carrying(b, a)
    asks = [a.request(b, b"a%d" % i) for i in range(20)] + [
        b.request(a, b"b%d" % i) for i in range(20)
    ]
    answers = await bounded(asyncio.gather(*asks))
    expected = [b"a%d" % i for i in range(20)] + [b"b%d" % i for i in range(20)]
    assert [r.payload for r in answers] == expected
    for node in (a, b):
        stats = node.transport.stats()
        assert stats["responses_sent"] == 20
        assert stats["responses_carried"] == 20  # none on the server side of the asker's stream
        assert stats["responses_received"] == 20
        assert stats["late_responses"] == 0


async def test_an_older_peer_keeps_two_streams(nodes: NodeFactory) -> None:
    new = await nodes()
    old = await nodes(shared_frames=False)  # neither offers nor echoes: like an older node
    await linked((new, old), (old, new))
    assert not carrying(new, old)
    assert not isinstance(
        old.transport._peers[new.address], type(new.transport._peers[old.address])
    )
    asks = [new.request(old, b"n%d" % i) for i in range(10)] + [
        old.request(new, b"o%d" % i) for i in range(10)
    ]
    answers = await bounded(asyncio.gather(*asks))
    assert [r.payload for r in answers][:2] == [b"n0", b"n1"]
    assert [r.payload for r in answers][10:12] == [b"o0", b"o1"]
    assert new.transport.stats()["responses_carried"] == 0
    assert new.transport.stats()["responses_sent"] == 10
    assert "responses_carried" in old.transport.stats()  # counted, never used
    assert old.transport.stats()["responses_carried"] == 0


@pytest.mark.parametrize(
    ("server_shares", "offer", "echoed"),
    [(True, True, True), (True, False, False), (False, True, False)],
)
async def test_the_server_echoes_only_an_offer_it_takes(
    nodes: NodeFactory,
    channels: Callable[[str], grpc.aio.Channel],
    server_shares: bool,
    offer: bool,
    echoed: bool,
) -> None:
    server = await nodes(shared_frames=server_shares)
    metadata: tuple[tuple[str, str], ...] = ((SENDER_KEY, "127.0.0.1:1"),)
    if offer:
        metadata += ((SHARED_FRAMES_KEY, "raw-client"),)
    call = channels(server.address).stream_stream(
        EXCHANGE_PATH, request_serializer=None, response_deserializer=None
    )(None, metadata=metadata)
    initial = dict(await bounded(call.initial_metadata()))
    assert initial[ACCEPTED_KEY] == "1"
    # The echo is the server's own instance id (a random token), never the offer's.
    echo = initial.get(SHARED_FRAMES_KEY)
    assert (echo is not None) is echoed
    assert echo != "raw-client"
    call.cancel()


async def test_answers_on_a_stream_that_did_not_negotiate_are_ignored(
    nodes: NodeFactory, channels: Callable[[str], grpc.aio.Channel]
) -> None:
    server = await nodes()
    call = channels(server.address).stream_stream(
        EXCHANGE_PATH, request_serializer=None, response_deserializer=None
    )(None, metadata=((SENDER_KEY, "127.0.0.1:1"),))
    await bounded(call.initial_metadata())
    frame = pb.Frame(
        requests=[pb.Request(id=7, namespace="t", command="echo", payload=b"q")],
        responses=[pb.Response(id=1, payload=b"nobody asked")],
    )
    await bounded(call.write(frame.SerializeToString()))
    answer = pb.Frame.FromString(await bounded(call.read()))
    assert [(r.id, r.payload) for r in answer.responses] == [(7, b"q")]  # the stream goes on
    stats = server.transport.stats()
    assert stats["late_responses"] == 1
    assert stats["responses_carried"] == 0
    call.cancel()


async def test_answers_go_only_to_the_instance_that_asked(
    nodes: NodeFactory, channels: Callable[[str], grpc.aio.Channel]
) -> None:
    a, b = await nodes(), await nodes()
    await linked((b, a))  # b's own stream to a carries answers
    assert carrying(b, a)
    # A stream from an older instance of a at the same address (a node restarted while its
    # old connection stayed half-open): its ids mean other requests than the new a's.
    call = channels(b.address).stream_stream(
        EXCHANGE_PATH, request_serializer=None, response_deserializer=None
    )(None, metadata=((SENDER_KEY, a.address), (SHARED_FRAMES_KEY, "old-instance")))
    await bounded(call.initial_metadata())
    frame = pb.Frame(requests=[pb.Request(id=1, namespace="t", command="echo", payload=b"old")])
    await bounded(call.write(frame.SerializeToString()))
    answer = pb.Frame.FromString(await bounded(call.read()))
    assert [(r.id, r.payload) for r in answer.responses] == [(1, b"old")]  # server side
    assert b.transport.stats()["responses_carried"] == 0
    assert a.transport.stats()["responses_received"] == 0
    held = b.request(a, b"x", key=b"x")
    call.cancel()  # the old instance's stream ends: b's requests to the new a are not failed
    assert (await bounded(held)).payload == b"x"


async def test_answers_take_the_server_side_once_the_own_stream_is_gone(
    nodes: NodeFactory,
) -> None:
    gate = Gate()
    a = await nodes()
    b = await nodes(handler=gate)
    await linked((a, b), (b, a))
    assert carrying(b, a)
    slow = a.request(b, b"slow", key=b"slow")
    await bounded(gate.arrived.wait())
    b.transport.forget_peer(a.address)  # b's own stream to a closes: nothing to ride on
    # Its answer could have been on that stream: a fails it at once rather than at its
    # deadline (as for a broken stream of its own).
    with pytest.raises(PeerUnavailableError):
        await bounded(slow)
    assert (await bounded(a.request(b, b"after"))).payload == b"after"
    assert b.transport.stats()["responses_carried"] == 0  # on the server side of a's stream
    gate.open.set()


async def test_a_new_connection_never_reuses_the_ids_of_a_forgotten_one(
    nodes: NodeFactory,
) -> None:
    a, b = await nodes(), await nodes()
    await linked((a, b), (b, a))
    for i in range(5):
        assert (await bounded(a.request(b, b"%d" % i))).payload == b"%d" % i
    used = a.transport._peers[b.address].next_id
    a.transport.forget_peer(b.address)
    assert (await bounded(a.request(b, b"new"))).payload == b"new"
    # A stale answer still travelling on b's stream could otherwise match a new request.
    assert a.transport._peers[b.address].next_id == used + 1


async def test_a_handler_calling_back_the_sender_at_the_bounds_is_answered(
    nodes: NodeFactory,
) -> None:
    # a's reader of b's stream is at its bounds (2 handlers running, 4 more requests read),
    # and its handlers wait for b's answers, which ride on that same stream.
    box: dict[str, Any] = {}

    def outer(sender: str, request: Request) -> Awaitable[Response]:
        async def run() -> Response:
            inner = await box["a"].request(sender, b"in:" + request.payload)
            return Response(Status.OK, inner.payload)

        return run()

    limits = TransportLimits(
        backoff_initial=0.02,
        backoff_max=0.2,
        connect_timeout=2.0,
        max_inbound_pending_requests=2,
    )
    a = box["a"] = await nodes(handler=outer, limits=limits)
    b = await nodes()
    await linked((a, b), (b, a))
    answers = await bounded(asyncio.gather(*(b.request(a, b"%d" % i) for i in range(6))))
    assert [r.payload for r in answers] == [b"in:%d" % i for i in range(6)]
    assert a.transport.stats()["backpressure_pauses"] >= 1  # the bound was reached
    assert a.transport.stats()["timeouts"] == 0


async def test_answers_over_the_budget_take_the_server_side(nodes: NodeFactory) -> None:
    pending = 64 * 1024
    limits = TransportLimits(
        backoff_initial=0.02,
        backoff_max=0.2,
        connect_timeout=2.0,
        max_inbound_pending_bytes=pending,
    )
    a, b = await nodes(), await nodes(limits=limits)
    await linked((a, b), (b, a))
    big = b"x" * (pending // CARRY_BUDGET_SHARE + 1)  # one answer over the whole budget
    assert (await bounded(a.request(b, big))).payload == big
    assert b.transport.stats()["responses_carried"] == 0
    assert (await bounded(a.request(b, b"small"))).payload == b"small"
    assert b.transport.stats()["responses_carried"] == 1


async def test_both_sides_under_backpressure_do_not_wedge(nodes: NodeFactory) -> None:
    # Bounds small enough that both inbound readers pause while their answers wait behind
    # the other side's writes; every answer must still arrive.
    limits = TransportLimits(
        backoff_initial=0.02,
        backoff_max=0.2,
        connect_timeout=2.0,
        max_inbound_pending_bytes=32 * 1024,
    )
    a, b = await nodes(limits=limits), await nodes(limits=limits)
    await linked((a, b), (b, a))
    payload = b"p" * 6000
    asks = [a.request(b, payload + b"%d" % i) for i in range(150)] + [
        b.request(a, payload + b"%d" % i) for i in range(150)
    ]
    answers = await bounded(asyncio.gather(*asks))
    assert [r.payload[-3:] for r in answers[:150]] == [
        (payload + b"%d" % i)[-3:] for i in range(150)
    ]
    assert all(r.status is Status.OK for r in answers)
    stats = [n.transport.stats() for n in (a, b)]
    assert all(s["late_responses"] == 0 for s in stats)
    # Small answers afterwards take the shared path again (nothing was left counted).
    carried = b.transport.stats()["responses_carried"]
    assert (await bounded(a.request(b, b"after"))).payload == b"after"
    assert b.transport.stats()["responses_carried"] == carried + 1


async def test_a_node_with_shared_frames_off_makes_plain_connections(nodes: NodeFactory) -> None:
    a = await nodes(shared_frames=False)
    b = await nodes(shared_frames=False)
    await linked((a, b), (b, a))
    assert not hasattr(a.transport._peers[b.address], "carrying")
    answers = await bounded(asyncio.gather(a.request(b, b"1"), b.request(a, b"2")))
    assert [r.payload for r in answers] == [b"1", b"2"]
    assert isinstance(a.transport, GrpcTransport)
