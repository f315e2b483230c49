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

from peer_ring.core import Command, CommandContext, PeerRing, PeerRingConfig
from peer_ring.core._errors import PeerUnavailableError, QuorumNotReachedError, RequestTimeoutError
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
    assert a._peers[b.address].carrying and b._peers[a.address].carrying
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
    assert not a._peers[address].carrying  # the restarted peer did not echo the offer
    # A answered the older peer's 30 requests on the server side of its stream.
    assert a.stats()["responses_carried"] == carried
    assert a.stats()["late_responses"] == 0


# -- a cluster: every acknowledged write survives a node's restart ---------------------------

PUT = Command("put", mutates=True)
GET = Command("get", reads=True)


class Store:
    """A node's data, kept across its restart (as a disk would)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def put(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        self.data[key] = payload
        return b"ok"

    def get(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        return self.data.get(key, b"")


async def connect_all(nodes: list[PeerRing]) -> None:
    """Open every node's connections to the others first: these tests check calls on
    connections, not connection set-up on a loaded machine (up to 20 real attempts each)."""
    for node in nodes:
        for peer in node.members:
            if peer == node.address:
                continue
            for attempt in range(20):
                try:
                    await bounded(node.transport.connect(peer))
                    break
                except PeerUnavailableError:
                    if attempt == 19:
                        raise


async def read_back(node: PeerRing, key: bytes) -> list[bytes]:
    """The payloads of a quorum read of ``key``, retried (a failed read loses nothing)."""
    for attempt in range(10):
        try:
            return (await node.execute("kv", GET, key, b"", timeout=5.0)).payloads
        except QuorumNotReachedError:
            if attempt == 9:
                raise
            await asyncio.sleep(0.1)
    raise AssertionError("unreachable")


NODE_LIMITS = TransportLimits(connect_timeout=5.0, backoff_initial=0.02, backoff_max=0.2)
NODE_CONFIG = PeerRingConfig(
    partitions=64,
    replication=3,
    quorum=2,
    request_timeout=2.0,
    transport_limits=NODE_LIMITS,
    anti_entropy_interval=None,
)


def grpc_node(address: str, peers: list[str], store: Store, shared: bool) -> PeerRing:
    transport = GrpcTransport(address, limits=NODE_LIMITS, shared_frames=shared)
    node = PeerRing(FixedDiscovery(address, peers), config=NODE_CONFIG, transport=transport)
    node.register("kv", PUT, store.put)
    node.register("kv", GET, store.get)
    return node


@pytest.mark.slow
@pytest.mark.parametrize("mixed", [False, True], ids=["all-shared", "one-two-streams"])
async def test_acknowledged_writes_survive_a_restart_over_grpc(mixed: bool) -> None:
    """3 nodes, R3/Q2, writers on every node while one node is stopped and restarted (its
    data kept): every acknowledged write is on at least 2 nodes and readable afterwards."""
    peers = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    stores = {p: Store() for p in peers}
    shared = {p: not (mixed and i == 2) for i, p in enumerate(peers)}
    nodes = {p: grpc_node(p, peers, stores[p], shared[p]) for p in peers}
    acked: dict[bytes, bytes] = {}
    failed = 0
    try:
        for node in nodes.values():
            await node.start()
        await bounded(asyncio.gather(*(n.wait_ready(LIMIT) for n in nodes.values())))
        await connect_all(list(nodes.values()))
        victim = peers[1]
        stop = asyncio.Event()

        async def writer(w: int) -> None:
            nonlocal failed
            for i in range(100_000):  # bounded: stop ends it long before
                if stop.is_set():
                    return
                node = nodes[peers[(w + i) % 3]]
                if node.address == victim and not node.ready:
                    await asyncio.sleep(0.005)
                    continue
                key, value = b"w%d-%d" % (w, i), b"v%d-%d" % (w, i)
                try:
                    await node.execute("kv", PUT, key, value, timeout=2.0)
                except Exception:
                    failed += 1  # not acknowledged: nothing promised
                else:
                    acked[key] = value

        writers = [asyncio.ensure_future(writer(w)) for w in range(6)]
        try:
            await asyncio.sleep(0.5)
            await nodes[victim].stop()
            await asyncio.sleep(1.0)
            nodes[victim] = grpc_node(victim, peers, stores[victim], shared[victim])
            await nodes[victim].start()
            await bounded(nodes[victim].wait_ready(LIMIT))
            await asyncio.sleep(1.0)
        finally:
            stop.set()
            await bounded(asyncio.gather(*writers))
        assert len(acked) > 100, (len(acked), failed)
        for key, value in acked.items():
            holders = sum(store.data.get(key) == value for store in stores.values())
            assert holders >= 2, (key, holders)
        for n, (key, value) in enumerate(sorted(acked.items())):
            if n % 10:
                continue  # a sample read back through the public API
            payloads = await read_back(nodes[peers[n % 3]], key)
            assert value in payloads, (key, payloads)
    finally:
        for node in nodes.values():
            await node.stop()


RELAY = Command("relay", mutates=True, hinted=False)


@pytest.mark.parametrize("mixed", [False, True], ids=["all-shared", "one-two-streams"])
async def test_node_handlers_calling_back_their_sender_over_grpc(mixed: bool) -> None:
    """Each replica's handler asks the coordinator back (node.call): the answers to the
    call-backs ride on the very streams whose requests are being served. Every execute
    succeeds, well within the inner calls' 3 s deadline."""
    peers = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    stores = {p: Store() for p in peers}
    nodes: dict[str, PeerRing] = {}

    def make(address: str, shared: bool) -> PeerRing:
        node = grpc_node(address, peers, stores[address], shared)

        async def relay(ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
            if ctx.local:
                return payload
            back = await node.call(ctx.source, "kv", GET, key, b"", timeout=3.0)
            return payload + b"|" + back

        node.register("kv", RELAY, relay)
        return node

    try:
        for i, p in enumerate(peers):
            nodes[p] = make(p, not (mixed and i == 2))
            await nodes[p].start()
            stores[p].data[b"k"] = b"at-" + p.encode()
        await bounded(asyncio.gather(*(n.wait_ready(LIMIT) for n in nodes.values())))
        await connect_all(list(nodes.values()))

        async def one(node: PeerRing, i: int) -> None:
            result = await node.execute("kv", RELAY, b"k", b"%d" % i, quorum=3, timeout=10.0)
            for reply in result.ok_replies:
                if reply.node != node.address:
                    assert reply.payload == b"%d|at-%s" % (i, node.address.encode())

        await bounded(asyncio.gather(*(one(n, i) for n in nodes.values() for i in range(30))))
    finally:
        for n in nodes.values():
            await n.stop()


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
        (stream,) = list(server._inbound)
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
