"""Review of the transports' shared writer and reader loops (c4e0252), real sockets.

Since c4e0252 one ``FrameWriter._write_loop`` serves TCP and gRPC connections, the gRPC
shared frames' carried answers riding in it through hooks (``_take_riders``,
``_riders_written``...), and one ``InboundStream`` reader serves plain gRPC streams,
shared gRPC streams (answers first, requests over the bounds deferred) and TCP streams
(``take_frame``). These tests drive all three through tight bounds at once and check
what a user relies on, whatever path a frame took:

- every answer resolves its own request (both directions at once; inline and Task
  handlers, handlers that raise, answers large enough to split frames, cancellations and
  deadlines shorter than the handler);
- nothing stays counted once every request is settled: in-flight slots, the inbound
  streams' unsent answer bytes, running handlers, deferred requests, and the answers a
  shared connection carries (a leak there stalls a stream for good once it reaches the
  bounds);
- a peer that stops mid-request fails the requests written to it at once (not at their
  deadline), and the same address served again answers new requests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from peer_ring.core._errors import PeerUnavailableError, RequestTimeoutError
from peer_ring.core._types import Request, Response, Status, TransferRequest
from peer_ring.core.testing import free_port
from peer_ring.core.transport import GrpcTransport, TcpTransport, TransportLimits

#: Upper bound of any single wait (real seconds). Only reached on a bug.
LIMIT = 30.0

#: Tight bounds: 4 running handlers per stream, 16 requests in flight per peer, frames of
#: 64 KiB (answers of up to 24 KiB split across frames), 256 KiB of unsent answers (a
#: shared connection carries a quarter of that: CARRY_BUDGET_SHARE).
TIGHT = TransportLimits(
    backoff_initial=0.02,
    backoff_max=0.2,
    connect_timeout=5.0,
    max_inbound_pending_requests=4,
    max_in_flight_per_peer=16,
    max_message_bytes=64 * 1024,
    max_inbound_pending_bytes=256 * 1024,
)

#: (transport class, shared_frames) per variant; None: the argument does not apply.
KINDS = {
    "tcp": (TcpTransport, None),
    "grpc-shared": (GrpcTransport, True),
    "grpc-two-streams": (GrpcTransport, False),
}

#: Bounds wide enough for the few requests a test holds open at once.
LOOSE = TransportLimits(backoff_initial=0.02, backoff_max=0.2, connect_timeout=5.0)

Make = Callable[..., Awaitable[Any]]


async def no_transfer(sender: str, request: TransferRequest) -> AsyncIterator[list[bytes]]:
    return
    yield  # pragma: no cover - makes this an async generator


async def bounded(aw: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(aw, LIMIT)


@pytest.fixture(params=sorted(KINDS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make(kind: str) -> AsyncIterator[Make]:
    """``await make(handler, limits=TIGHT, address=None)``: a started transport of ``kind``;
    every one made is closed after the test (closing twice is harmless)."""
    made: list[Any] = []
    cls, shared = KINDS[kind]

    async def build(handler: Any, *, limits: TransportLimits = TIGHT, address: str = "") -> Any:
        extra = {} if shared is None else {"shared_frames": shared}
        transport = cls(address or f"127.0.0.1:{free_port()}", limits=limits, **extra)
        made.append(transport)
        await transport.start(handler, no_transfer)
        return transport

    yield build
    await asyncio.gather(*(t.close() for t in made), return_exceptions=True)


def mixed(sender: str, request: Request) -> Response | Awaitable[Response]:
    """``echo``: inline; ``big``: inline, the payload plus ``key`` KiB; ``later``: a Task
    that yields ``key`` loop turns; ``boom``: raises inline; ``boom-later``: in a Task;
    ``stall``: a Task that never ends (cancelled at its deadline)."""
    command = request.command
    if command == "echo":
        return Response(Status.OK, request.payload)
    if command == "big":
        return Response(Status.OK, request.payload + b"b" * (1024 * int(request.key)))
    if command == "boom":
        raise ValueError("boom " + request.payload.decode())
    return later(request)


async def later(request: Request) -> Response:
    if request.command == "stall":
        await asyncio.Event().wait()
    for _ in range(int(request.key or b"0")):
        await asyncio.sleep(0)
    if request.command == "boom-later":
        raise ValueError("boom " + request.payload.decode())
    return Response(Status.OK, request.payload)


async def link(a: Any, b: Any) -> None:
    """Both directions connected (gRPC: each writer has read the answer to its offer)."""
    for x, y in ((a, b), (b, a)):
        for attempt in range(20):
            try:
                await bounded(x.connect(y.address))
                break
            except PeerUnavailableError:
                if attempt == 19:
                    raise
    for x, y in ((a, b), (b, a)):
        conn = x._peers[y.address]
        for _ in range(4000):  # the writer reads the offer's answer a few turns later
            if getattr(conn, "_writer_idle", True):
                break
            await asyncio.sleep(0.001)


def quiet(a: Any, b: Any) -> list[str]:
    """What ``a`` still counts for its link to ``b`` and its streams from ``b`` (empty when
    nothing is left)."""
    left: list[str] = []
    conn = a._peers.get(b.address)
    if conn is not None:
        if conn.load() != (0, 0):
            left.append(f"load {conn.load()}")
        for name in ("_carried", "_writing"):
            if getattr(conn, name, None):
                left.append(f"{name} {getattr(conn, name)!r:.80}")
        if getattr(conn, "_carried_bytes", 0):
            left.append(f"_carried_bytes {conn._carried_bytes}")
    for s in list(a._inbound):
        if s._pending_bytes or s._tasks or s._outbox:
            left.append(f"inbound {s._pending_bytes} B, {len(s._tasks)} tasks, {len(s._outbox)}")
        if getattr(s, "_deferred", None) or getattr(s, "_deferred_bytes", 0):
            left.append(f"deferred {len(s._deferred)} ({s._deferred_bytes} B)")
    return left


async def settled(a: Any, b: Any) -> None:
    for _ in range(4000):
        if not quiet(a, b) and not quiet(b, a):
            break
        await asyncio.sleep(0.005)
    assert quiet(a, b) == [] and quiet(b, a) == []


async def test_a_seeded_mix_under_tight_bounds_answers_each_request_with_its_own(
    make: Make, kind: str
) -> None:
    a = await make(mixed)
    b = await make(mixed)
    await link(a, b)
    rng = random.Random(f"loops-{kind}")
    tally = {"ok": 0, "error": 0, "cancelled": 0, "timed_out": 0}

    async def one(src: Any, dst: Any, n: int) -> None:
        what = rng.choice(["echo", "echo", "big", "later", "later", "boom", "boom-later"])
        how = rng.choice(["wait", "wait", "wait", "cancel", "short"])
        payload = b"%s-%d" % (src.address.encode(), n)
        key = b"%d" % (rng.randrange(1, 24) if what == "big" else rng.randrange(0, 6))
        if how == "short":  # a deadline the handler never meets
            what = "stall"
        timeout = 0.05 if how == "short" else 20.0
        request = Request("t", what, key, payload, 0, "", timeout)
        fut = src.request(dst.address, request)
        if how == "cancel":
            for _ in range(rng.randrange(3)):
                await asyncio.sleep(0)
            fut.cancel()
            tally["cancelled"] += 1
            return
        try:
            answer = await bounded(fut)
        except RequestTimeoutError:
            assert how == "short", (what, payload)
            tally["timed_out"] += 1
            return
        if how == "short":
            assert answer.status is Status.TIMEOUT, (answer, payload)
            tally["timed_out"] += 1
        elif what.startswith("boom"):
            assert answer.status is Status.ERROR, (answer, payload)
            assert "boom " + payload.decode() in answer.error
            tally["error"] += 1
        else:
            assert answer.status is Status.OK, (answer, payload)
            extra = 1024 * int(key) if what == "big" else 0
            assert answer.payload == payload + b"b" * extra, (what, payload, len(answer.payload))
            tally["ok"] += 1

    async def driver(src: Any, dst: Any, base: int) -> None:
        n = base
        for _ in range(25):
            size = rng.choice([1, 1, 3, 12, 40])
            if rng.random() < 0.5:
                await bounded(asyncio.gather(*(one(src, dst, n + i) for i in range(size))))
            else:  # one a turn: writes meeting frames being read and answers carried
                tasks = []
                for i in range(size):
                    tasks.append(asyncio.ensure_future(one(src, dst, n + i)))
                    await asyncio.sleep(0)
                await bounded(asyncio.gather(*tasks))
            n += size

    await bounded(asyncio.gather(driver(a, b, 0), driver(b, a, 1_000_000)))
    assert tally["ok"] > 100 and tally["error"] and tally["cancelled"], tally
    for t in (a, b):
        stats = t.stats()
        assert stats.get("malformed_frames", 0) == 0, stats
        assert stats.get("stream_failures", 0) == 0, stats
    await settled(a, b)
    # The link still answers afterwards, both ways.
    for src, dst in ((a, b), (b, a)):
        answer = await bounded(src.request(dst.address, Request("t", "echo", b"0", b"after")))
        assert answer.payload == b"after"
    if kind == "grpc-shared":
        # The shared path did carry answers (else this variant tested two streams).
        assert a.stats()["responses_carried"] and b.stats()["responses_carried"]


async def test_answers_split_across_frames_keep_their_order_and_bytes(make: Make) -> None:
    """100 answers of 20-40 KiB in both directions at once (frames of 64 KiB): each arrives
    whole, byte for byte, to its own request."""
    a = await make(mixed)
    b = await make(mixed)
    await link(a, b)

    def asks(src: Any, dst: Any) -> list[Any]:
        return [
            src.request(dst.address, Request("t", "big", b"%d" % (20 + i % 21), b"%04d" % i))
            for i in range(100)
        ]

    answers = await bounded(asyncio.gather(*asks(a, b), *asks(b, a)))
    for n, answer in enumerate(answers):
        i = n % 100
        assert answer.status is Status.OK
        assert answer.payload == b"%04d" % i + b"b" * (1024 * (20 + i % 21)), i
    await settled(a, b)


async def test_a_peer_stopping_mid_request_fails_what_was_written_to_it_at_once(
    make: Make,
) -> None:
    """B runs A's requests in Tasks (held), and its own requests to A are answered by A
    (on A's stream to B when shared): B closes. A's requests fail with
    PeerUnavailableError well before their 20 s deadline, nothing stays counted on A,
    and a new B at the same address answers A's new requests."""
    release = asyncio.Event()
    arrived = asyncio.Event()

    def held(sender: str, request: Request) -> Response | Awaitable[Response]:
        if request.command == "hold":
            return hold(request)
        return Response(Status.OK, request.payload)

    async def hold(request: Request) -> Response:
        arrived.set()
        await release.wait()
        return Response(Status.OK, request.payload)

    a = await make(mixed, limits=LOOSE)
    b = await make(held, limits=LOOSE)
    await link(a, b)
    # Traffic B -> A too, so that A has answers to carry on its link to B.
    back = [b.request(a.address, Request("t", "later", b"3", b"%d" % i)) for i in range(20)]
    futures = [
        a.request(b.address, Request("t", "hold", b"k", b"%d" % i, 0, "", 20.0)) for i in range(8)
    ]
    await bounded(arrived.wait())
    await bounded(asyncio.gather(*back, return_exceptions=True))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await bounded(b.close())
    outcomes = await bounded(asyncio.gather(*futures, return_exceptions=True))
    assert all(isinstance(o, PeerUnavailableError) for o in outcomes), outcomes
    assert loop.time() - started < 10.0  # a fraction of the deadline, even on a loaded box
    conn = a._peers[b.address]
    assert conn.load() == (0, 0)
    assert quiet(a, b) == []
    release.set()
    again = await make(held, limits=LOOSE, address=b.address)
    for _ in range(400):
        try:
            answer = await bounded(a.request(again.address, Request("t", "echo", b"k", b"new")))
            break
        except PeerUnavailableError:
            await asyncio.sleep(0.02)  # A reconnects on its own backoff
    else:
        pytest.fail("A never reached the new node at the same address")
    assert answer.payload == b"new"


# -- the inbound handler part (b1519de moved it to _inbound_handlers.py) -------------------


class Watched:
    """A handler whose Tasks wait for ``release``; records which ended cancelled.
    ``bad``: returns a str (not bytes) inline."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started: dict[bytes, asyncio.Event] = {}
        self.cancelled: set[bytes] = set()

    def __call__(self, sender: str, request: Request) -> Response | Awaitable[Response]:
        if request.command == "bad":
            return "not bytes"  # type: ignore[return-value]
        if request.command == "echo":
            return Response(Status.OK, request.payload)
        self.started.setdefault(request.payload, asyncio.Event())
        return self._run(request)

    async def _run(self, request: Request) -> Response:
        self.started[request.payload].set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.add(request.payload)
            raise
        return Response(Status.OK, request.payload)

    async def wait_started(self, payload: bytes) -> None:
        await bounded(self.started.setdefault(payload, asyncio.Event()).wait())


async def test_a_handler_returning_no_bytes_is_an_error_answer_and_serving_goes_on(
    make: Make,
) -> None:
    a = await make(mixed, limits=LOOSE)
    b = await make(Watched(), limits=LOOSE)
    await link(a, b)
    answers = await bounded(
        asyncio.gather(
            *(
                a.request(b.address, Request("t", "bad" if i % 2 else "echo", b"k", b"%d" % i))
                for i in range(20)
            )
        )
    )
    for i, answer in enumerate(answers):
        if i % 2:
            assert answer.status is Status.ERROR and "str" in answer.error, answer
        else:
            assert (answer.status, answer.payload) == (Status.OK, b"%d" % i)
    await settled(a, b)


async def test_a_cancelled_request_cancels_its_running_handler_on_the_peer(make: Make) -> None:
    watched = Watched()
    a = await make(mixed, limits=LOOSE)
    b = await make(watched, limits=LOOSE)
    await link(a, b)
    futures = [a.request(b.address, Request("t", "hold", b"k", b"%d" % i)) for i in range(6)]
    for i in range(6):
        await watched.wait_started(b"%d" % i)
    for fut in futures[:3]:
        fut.cancel()
    # The peer hears of the cancels (a frame of cancels) and cancels those Tasks only.
    for _ in range(4000):
        if len(watched.cancelled) == 3:
            break
        await asyncio.sleep(0.005)
    assert watched.cancelled == {b"0", b"1", b"2"}
    watched.release.set()
    answers = await bounded(asyncio.gather(*futures[3:]))
    assert [x.payload for x in answers] == [b"3", b"4", b"5"]
    await settled(a, b)


async def test_a_handler_past_the_servers_max_request_timeout_is_answered_timeout(
    make: Make,
) -> None:
    """The request asks for 20 s; the server clamps it to max_request_timeout (0.2 s):
    its Task is cancelled there and the caller gets TIMEOUT well before its own 20 s."""
    watched = Watched()
    clamped = dataclasses.replace(LOOSE, max_request_timeout=0.2)
    a = await make(mixed, limits=LOOSE)
    b = await make(watched, limits=clamped)
    await link(a, b)
    loop = asyncio.get_running_loop()
    started = loop.time()
    answer = await bounded(a.request(b.address, Request("t", "hold", b"k", b"x", 0, "", 20.0)))
    assert answer.status is Status.TIMEOUT, answer
    assert loop.time() - started < 10.0
    assert watched.cancelled == {b"x"}
    await settled(a, b)


async def test_handlers_running_when_their_sender_closes_are_cancelled_and_released(
    make: Make,
) -> None:
    watched = Watched()
    a = await make(mixed, limits=LOOSE)
    b = await make(watched, limits=LOOSE)
    await link(a, b)
    futures = [a.request(b.address, Request("t", "hold", b"k", b"%d" % i)) for i in range(5)]
    for i in range(5):
        await watched.wait_started(b"%d" % i)
    await bounded(a.close())
    for outcome in await bounded(asyncio.gather(*futures, return_exceptions=True)):
        assert isinstance(outcome, Exception), outcome  # not answered: the sender closed
    for _ in range(4000):
        if len(watched.cancelled) == 5 and not any(s._tasks for s in list(b._inbound)):
            break
        await asyncio.sleep(0.005)
    assert watched.cancelled == {b"%d" % i for i in range(5)}
    assert all(not s._tasks and not s._pending_bytes for s in list(b._inbound))
