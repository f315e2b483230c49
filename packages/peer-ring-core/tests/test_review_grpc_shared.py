"""Review of the gRPC transport's shared frames (``transport._grpc_shared``), real gRPC on loopback.

With shared frames, B's answers to A's requests ride on B's own Exchange stream to A
(``B -> A``) and A matches them against its connection to B by request id. What must
still hold, whatever path an answer takes:

- an answer only ever resolves the request it answers (never a later request that
  reuses its id on a new connection to the same peer);
- a handler that calls back the peer that sent its request is answered even while this
  node's reader of that peer's stream is paused at the inbound bounds (the peer's
  answers ride on that very stream);
- an answer lost with a dying stream does not leave its caller waiting for its whole
  deadline while the caller's own stream to the answerer is up;
- a peer that negotiated and then restarts without the offer (an older node) is served
  on two streams again; a mixed cluster (one node with ``shared_frames=False``) keeps
  every acknowledged write while a node is stopped and restarted.

The first three failed on 938615c (a newer request answered with an older one's payload;
six call-backs stuck for 9 s instead of answered at once; an answer lost and its caller
waiting its whole 4 s deadline) and pass since ca4ab5b. Each is checked against
``shared_frames=False`` (the two-stream behaviour) in the same test, so a failure names the
shared path, not the test's set-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc.aio
import pytest

from peer_ring.core import PeerRing
from peer_ring.core._errors import PeerUnavailableError, RequestTimeoutError
from peer_ring.core._types import Request, Response, Status, TransferRequest
from peer_ring.core.proto import peer_ring_pb2 as pb
from peer_ring.core.testing import FixedDiscovery, free_port
from peer_ring.core.transport import GrpcTransport, TransportLimits
from peer_ring.core.transport._options import EXCHANGE_PATH, SENDER_KEY, SHARED_FRAMES_KEY

#: Upper bound of any single wait (real seconds). Only reached on a bug.
LIMIT = 20.0

FAST = TransportLimits(backoff_initial=0.02, backoff_max=0.2, connect_timeout=2.0)
#: One running handler Task pauses the inbound reader (a request held open pauses it).
ONE_PENDING = TransportLimits(
    backoff_initial=0.02, backoff_max=0.2, connect_timeout=2.0, max_inbound_pending_requests=1
)


async def no_transfer(sender: str, request: TransferRequest) -> AsyncIterator[list[bytes]]:
    return
    yield  # pragma: no cover - makes this an async generator


def echo(sender: str, request: Request) -> Response:
    return Response(Status.OK, request.payload)


async def bounded(aw: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(aw, LIMIT)


Make = Callable[..., Awaitable[GrpcTransport]]


@pytest.fixture
async def grpc_nodes() -> AsyncIterator[Make]:
    """Started GrpcTransports on loopback; all closed after the test."""
    made: list[GrpcTransport] = []

    async def make(
        handler: Any = echo,
        *,
        limits: TransportLimits = FAST,
        shared: bool = True,
        address: str | None = None,
    ) -> GrpcTransport:
        t = GrpcTransport(
            address or f"127.0.0.1:{free_port()}", limits=limits, shared_frames=shared
        )
        made.append(t)
        await t.start(handler, no_transfer)
        return t

    yield make
    await asyncio.gather(*(t.close() for t in made))


async def link(a: GrpcTransport, b: GrpcTransport) -> None:
    """Both streams up, and each writer has read the peer's answer to the offer."""
    await bounded(a.connect(b.address))
    await bounded(b.connect(a.address))
    for x, y in ((a, b), (b, a)):
        conn = x._peers[y.address]
        # The writer reads the initial metadata a few turns after connect(): no event.
        for _ in range(2000):
            if conn._writer_idle:
                break
            await asyncio.sleep(0.001)
        assert conn._writer_idle


def ask(src: GrpcTransport, dst: GrpcTransport, payload: bytes, **fields: Any) -> Any:
    fields.setdefault("timeout", 10.0)
    fields.setdefault("key", b"k")
    fields.setdefault("command", "echo")
    return src.request(dst.address, Request("t", payload=payload, **fields))


class Holder:
    """A handler that answers at once, except ``key=b"hold"``: held until :attr:`release`."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.arrived = asyncio.Event()

    def __call__(self, sender: str, request: Request) -> Response | Awaitable[Response]:
        if request.key == b"hold":
            return self._held(request)
        return Response(Status.OK, request.payload)

    async def _held(self, request: Request) -> Response:
        self.arrived.set()
        await self.release.wait()
        return Response(Status.OK, b"held")


#: Each finding runs on both paths: shared frames (its fix: ca4ab5b) and the two-stream
#: behaviour it must match.
SHARED = [pytest.param(True, id="shared"), pytest.param(False, id="two-streams")]


@pytest.mark.parametrize("shared", SHARED)
async def test_a_stale_carried_answer_never_resolves_a_newer_request(
    grpc_nodes: Make, shared: bool
) -> None:
    """A asks B (id 1), forgets B (a peer declared gone and back), asks again on a new
    connection (id 1 again): the old answer, still travelling on B's stream to A behind
    A's paused reader, must not resolve the new request (a 'get' answered with a 'set''s
    payload; a write's ack counted for another request)."""
    holder = Holder()
    a = await grpc_nodes(holder, limits=ONE_PENDING, shared=shared)
    b = await grpc_nodes(shared=shared)
    await link(a, b)
    held = ask(b, a, b"", key=b"hold")  # A's reader of B's stream pauses behind it
    await bounded(holder.arrived.wait())
    old = ask(a, b, b"OLD", command="set")
    for _ in range(200):  # B answered it (on its own stream when shared)
        if b.stats()["responses_sent"]:
            break
        await asyncio.sleep(0.005)
    assert b.stats()["responses_sent"] == 1
    a.forget_peer(b.address)
    # Two streams: answered on A's own stream before the forget; shared: still on B's
    # stream, behind A's paused reader, so it fails with the connection.
    with contextlib.suppress(PeerUnavailableError):
        assert (await bounded(old)).payload == b"OLD"
    new = ask(a, b, b"NEW", command="get")
    for _ in range(200):
        if b.stats()["responses_sent"] == 2:
            break
        await asyncio.sleep(0.005)
    holder.release.set()
    answer = await bounded(new)
    assert answer.payload == b"NEW"
    # A's stream to B, which may have carried A's answers, ended: retryable.
    with contextlib.suppress(PeerUnavailableError):
        assert (await bounded(held)).payload == b"held"


@pytest.mark.parametrize("shared", SHARED)
async def test_a_handler_calling_back_the_sender_under_backpressure_is_answered(
    grpc_nodes: Make, shared: bool
) -> None:
    box: dict[str, GrpcTransport] = {}

    def outer(sender: str, request: Request) -> Awaitable[Response]:
        async def run() -> Response:
            inner = await box["a"].request(
                sender, Request("t", "inner", b"k", request.payload, 0, "", 3.0)
            )
            return Response(Status.OK, b"via:" + inner.payload)

        return run()

    limits = TransportLimits(
        backoff_initial=0.02, backoff_max=0.2, connect_timeout=2.0, max_inbound_pending_requests=2
    )
    a = box["a"] = await grpc_nodes(outer, limits=limits, shared=shared)
    b = await grpc_nodes(shared=shared)
    await link(a, b)
    # An inner call that waited for its 3 s deadline fails its outer request: all OK means
    # none did.
    answers = await bounded(
        asyncio.gather(*(ask(b, a, b"%d" % i, command="outer") for i in range(6)))
    )
    assert [(r.status, r.payload) for r in answers] == [
        (Status.OK, b"via:%d" % i) for i in range(6)
    ]
    # Well inside the inner requests' 3 s deadline: nothing waited for a timeout.


@pytest.mark.parametrize("shared", SHARED)
async def test_answers_on_a_dying_shared_stream_do_not_leave_the_caller_waiting_its_deadline(
    grpc_nodes: Make, shared: bool
) -> None:
    """B answers A (on B's own stream when shared), then B's stream to A dies before A read
    the answer. A's own stream to B is up: the request must be answered, or fail at once
    (a retryable PeerUnavailableError), not time out after its deadline."""
    holder = Holder()
    a = await grpc_nodes(holder, limits=ONE_PENDING, shared=shared)
    b = await grpc_nodes(shared=shared)
    await link(a, b)
    held = ask(b, a, b"", key=b"hold")
    await bounded(holder.arrived.wait())
    started = time.monotonic()
    call = ask(a, b, b"V", command="set", timeout=4.0)
    for _ in range(200):
        if b.stats()["responses_sent"]:
            break
        await asyncio.sleep(0.005)
    b.forget_peer(a.address)  # B's stream to A ends (B thinks A left)
    with pytest.raises(PeerUnavailableError):
        await bounded(held)
    holder.release.set()
    try:
        answer = await bounded(call)
    except PeerUnavailableError:
        pass  # failing at once is fine: the caller retries
    except RequestTimeoutError:
        pytest.fail(f"answer lost: timed out after {time.monotonic() - started:.1f}s")
    else:
        assert answer.payload == b"V"


async def test_a_peer_that_restarts_without_shared_frames_is_served_on_two_streams(
    grpc_nodes: Make,
) -> None:
    a = await grpc_nodes()
    b = await grpc_nodes()
    await link(a, b)
    peers_of: Any = (a._peers, b._peers)  # the gRPC connections (typed as the base class)
    assert peers_of[0][b.address].carrying and peers_of[1][a.address].carrying
    assert (await bounded(ask(a, b, b"1"))).payload == b"1"
    assert (await bounded(ask(b, a, b"2"))).payload == b"2"
    carried = a.stats()["responses_carried"]
    assert carried == 1
    address = b.address
    await b.close()
    older = await grpc_nodes(shared=False, address=address)  # same address, no offer
    # A's connection reconnects on its own; requests fail fast while it is down.
    for _ in range(400):
        try:
            answer = await bounded(ask(a, older, b"after", timeout=2.0))
            break
        except PeerUnavailableError:
            await asyncio.sleep(0.01)
    else:
        pytest.fail("A never reached the restarted peer")
    assert answer.payload == b"after"
    await bounded(older.connect(a.address))
    answers = await bounded(
        asyncio.gather(
            *(ask(older, a, b"o%d" % i) for i in range(30)),
            *(ask(a, older, b"a%d" % i) for i in range(30)),
        )
    )
    assert [r.payload for r in answers] == [b"o%d" % i for i in range(30)] + [
        b"a%d" % i for i in range(30)
    ]
    assert not peers_of[0][address].carrying  # the restarted peer did not echo the offer
    # A answered the older peer's 30 requests on the server side of its stream.
    assert a.stats()["responses_carried"] == carried
    assert a.stats()["late_responses"] == 0


# -- a cluster: every acknowledged write survives a node's restart ---------------------------

#: ``review_cluster`` of conftest.py: a ``ReviewCluster`` (3 nodes, R3/Q2, namespace "kv").
Cluster = Any


def grpc_maker(cluster: Cluster, shared: dict[str, bool]) -> Callable[..., PeerRing]:
    """``make(address, peers, store)``: a gRPC node, shared frames as ``shared[address]``."""

    def make(address: str, peers: list[str], store: Any) -> PeerRing:
        transport = GrpcTransport(address, limits=cluster.LIMITS, shared_frames=shared[address])
        node = PeerRing(
            FixedDiscovery(address, peers), config=cluster.config(), transport=transport
        )
        node.register("kv", cluster.PUT, store.put)
        node.register("kv", cluster.GET, store.get)
        return node

    return make


@pytest.mark.slow
@pytest.mark.parametrize("mixed", [False, True], ids=["all-shared", "one-two-streams"])
async def test_acknowledged_writes_survive_a_restart_over_grpc(
    review_cluster: Cluster, mixed: bool
) -> None:
    """3 nodes, R3/Q2, writers on every node while one node is stopped and restarted (its
    data kept): every acknowledged write is on at least 2 nodes and readable afterwards.
    ``mixed``: the third node runs with ``shared_frames=False``."""
    peers = review_cluster.addresses()
    shared = {p: not (mixed and i == 2) for i, p in enumerate(peers)}
    make = grpc_maker(review_cluster, shared)
    await review_cluster.acknowledged_writes_survive_a_restart(make, peers)


@pytest.mark.parametrize("mixed", [False, True], ids=["all-shared", "one-two-streams"])
async def test_node_handlers_calling_back_their_sender_over_grpc(
    review_cluster: Cluster, mixed: bool
) -> None:
    """Each replica's handler asks the coordinator back (node.call): the answers to the
    call-backs ride on the very streams whose requests are being served. Every execute
    succeeds, well within the inner calls' 3 s deadline."""
    peers = review_cluster.addresses()
    shared = {p: not (mixed and i == 2) for i, p in enumerate(peers)}
    make = grpc_maker(review_cluster, shared)
    nodes = []
    for p in peers:
        store = review_cluster.Store()
        store.data[b"k"] = b"at-" + p.encode()
        node = make(p, peers, store)
        node.register("kv", review_cluster.RELAY, review_cluster.relay_handler(node))
        nodes.append(node)
    await review_cluster.start(nodes)
    await review_cluster.relay_from_every_node(nodes, 30)


async def test_a_flooding_sender_is_still_bounded_by_the_shared_reader(
    grpc_nodes: Make,
) -> None:
    """Since ca4ab5b a shared stream's reader no longer stops at the handler bounds (it
    defers requests, so the sender's answers are read): a sender that offers shared frames
    and floods requests is still held to max_in_flight_per_peer deferred requests plus one
    frame, and the handlers to max_inbound_pending_requests."""
    holder = Holder()
    limits = TransportLimits(
        backoff_initial=0.02,
        backoff_max=0.2,
        connect_timeout=2.0,
        max_inbound_pending_requests=4,
        max_in_flight_per_peer=64,
    )
    server = await grpc_nodes(holder, limits=limits)
    channel = grpc.aio.insecure_channel(server.address)
    try:
        call = channel.stream_stream(
            EXCHANGE_PATH, request_serializer=None, response_deserializer=None
        )(None, metadata=((SENDER_KEY, "127.0.0.1:1"), (SHARED_FRAMES_KEY, "1")))
        await bounded(call.initial_metadata())
        calls = 0
        for f in range(50):  # 50 frames of 20 held requests: 1,000
            frame = pb.Frame(
                requests=[
                    pb.Request(id=f * 20 + i + 1, namespace="t", command="c", key=b"hold")
                    for i in range(20)
                ]
            )
            try:
                await asyncio.wait_for(call.write(frame.SerializeToString()), 0.5)
            except TimeoutError:
                break  # flow control: the server stopped reading
            calls += 20
        stream: Any = next(iter(server._inbound))
        assert len(server._inbound) == 1
        for _ in range(100):
            await asyncio.sleep(0.01)
        assert calls > 64 + 20 + 4  # the sender did write past the bounds (HTTP/2 buffers)
        assert len(stream._tasks) == 4
        assert len(stream._deferred) < 64 + 20, len(stream._deferred)
        assert stream._deferred_bytes <= limits.max_inbound_pending_bytes
        assert server.stats()["requests_received"] < 64 + 20 + 4 + 20
        call.cancel()
    finally:
        await channel.close(None)
