"""The TCP transport's direct path, over real loopback connections: loop turns and frames.

A lone request is written by its caller and answered by the serving side in the turn it
arrives (``data_received``), and its answer is matched there too; before, each side woke a
reader task and a writer task that lingered a turn, about nine loop turns in all. Each
turn is a point where the host's other callbacks run first. What must not change: a
burst still leaves in few frames, the inbound bounds hold on the direct path, and a bad
frame is still reported and ends only its stream.

Turns are counted by a ticker that re-schedules itself with ``call_soon``: it runs once
per loop iteration. Timing (a loaded machine) can only add iterations, so the tests take
the fewest over several requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import pytest

from peer_ring.core._types import Request, Response, Status, TransferRequest
from peer_ring.core.testing import free_port
from peer_ring.core.transport import TcpTransport, TransportLimits

LIMIT = 15.0
FAST = TransportLimits(backoff_initial=0.02, backoff_max=0.2, connect_timeout=2.0)


async def no_transfer(sender: str, request: TransferRequest) -> AsyncIterator[list[bytes]]:
    return
    yield


def echo(sender: str, request: Request) -> Response:
    return Response(Status.OK, request.payload)


Pair = Callable[..., Awaitable[tuple[TcpTransport, TcpTransport]]]


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    made: list[TcpTransport] = []

    async def make(handler: Any = echo, limits: TransportLimits = FAST) -> tuple[Any, Any]:
        server = TcpTransport(f"127.0.0.1:{free_port()}", limits=limits)
        client = TcpTransport(f"127.0.0.1:{free_port()}", limits=FAST)
        made.extend((server, client))
        await server.start(handler, no_transfer)
        await client.start(echo, no_transfer)
        await asyncio.wait_for(client.connect(server.address), LIMIT)
        return client, server

    yield make
    await asyncio.gather(*(t.close() for t in made))


class Ticker:
    """Counts loop iterations (one call per iteration while it runs)."""

    def __init__(self) -> None:
        self.count = 0
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_soon(self._tick)

    def _tick(self) -> None:
        self.count += 1
        self._handle = self._loop.call_soon(self._tick)

    def stop(self) -> None:
        self._handle.cancel()


def note_turns(turns: list[int], ticker: Ticker, start: int, _: asyncio.Future[Response]) -> None:
    turns.append(ticker.count - start)


def ask(client: TcpTransport, server: TcpTransport, payload: bytes) -> asyncio.Future[Response]:
    return client.request(server.address, Request("t", "echo", b"k", payload, 0, "", 5.0))


async def test_a_lone_request_and_its_answer_take_three_loop_turns(pair: Pair) -> None:
    client, server = await pair()
    before_client, before_server = client.stats(), server.stats()
    ticker = Ticker()
    turns: list[int] = []
    try:
        for i in range(20):
            await asyncio.sleep(0.001)  # nothing in flight: a lone request
            start = ticker.count
            fut = ask(client, server, b"%d" % i)
            fut.add_done_callback(partial(note_turns, turns, ticker, start))
            resp = await asyncio.wait_for(fut, LIMIT)
            assert resp.payload == b"%d" % i
    finally:
        ticker.stop()
    # Written by the caller; read, served and answered by the server in its first turn;
    # matched by the client in its next; the future's callbacks run in the third (nine
    # before: each side's reader task, writer task and linger turn).
    assert min(turns) <= 3, turns
    c, s = client.stats(), server.stats()
    # Every frame of both sides went out without its writer task.
    assert c["frames_sent"] - before_client["frames_sent"] == 20
    assert c["direct_frames"] - before_client["direct_frames"] == 20
    assert s["frames_sent"] - before_server["frames_sent"] == 20
    assert s["direct_frames"] - before_server["direct_frames"] == 20


async def test_a_burst_still_leaves_in_few_frames(pair: Pair) -> None:
    client, server = await pair()
    futures = [ask(client, server, b"%d" % i) for i in range(200)]  # one loop turn
    answers = await asyncio.wait_for(asyncio.gather(*futures), LIMIT)
    assert [a.payload for a in answers] == [b"%d" % i for i in range(200)]
    c, s = client.stats(), server.stats()
    assert c["requests_sent"] == 200 and s["responses_sent"] == 200
    # The first two requests go out at once (fewer than DIRECT_BELOW in flight); the other
    # 198 wait for the writer: one frame.
    assert c["direct_frames"] == 2
    assert c["frames_sent"] == 3
    # The server answers each frame it reads with one frame.
    assert s["frames_sent"] <= 4


async def test_a_direct_request_schedules_no_callback(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writing a lone request leaves nothing for the loop to run: no callback, so no loop
    iteration of its own (a ``call_soon`` per direct request ended a "one per turn" rule
    before round 10: one more iteration, and a ``epoll_wait`` with a zero timeout, per
    remote request)."""
    client, server = await pair()
    assert (await asyncio.wait_for(ask(client, server, b"warm"), LIMIT)).payload == b"warm"
    loop = asyncio.get_running_loop()
    scheduled: list[Any] = []
    real = loop.call_soon

    def counting(callback: Any, *args: Any, **kwargs: Any) -> Any:
        scheduled.append(callback)
        return real(callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_soon", counting)
    before = client.stats()["direct_frames"]
    fut = ask(client, server, b"lone")
    assert client.stats()["direct_frames"] == before + 1  # written by the caller
    assert scheduled == []
    monkeypatch.undo()
    assert (await asyncio.wait_for(fut, LIMIT)).payload == b"lone"


async def test_requests_in_flight_keep_the_writer_coalescing(pair: Pair) -> None:
    """64 callers in a closed loop: answers wake them in groups, and their next requests
    join frames; the server's answers to frames of many requests go through its writer."""
    client, server = await pair()

    async def caller(n: int) -> None:
        for i in range(30):
            resp = await ask(client, server, b"%d-%d" % (n, i))
            assert resp.payload == b"%d-%d" % (n, i)

    await asyncio.wait_for(asyncio.gather(*(caller(n) for n in range(64))), LIMIT)
    c = client.stats()
    assert c["requests_sent"] == 64 * 30
    assert c["requests_sent"] >= 8 * c["frames_sent"], c
    # In one process the answers of a round arrive together and the callers' next requests
    # find nothing in flight; after a frame of several answers none goes out on its own
    # (it did, one per round of 64, before that rule: 30 here).
    assert c["direct_requests"] <= 3, c
    # The server answers frames of many requests through its writer, which joins them.
    s = server.stats()
    assert s["responses_sent"] >= 8 * s["frames_sent"], s


async def test_the_inbound_bounds_hold_on_the_direct_path(pair: Pair) -> None:
    """A frame asks for more running handlers than allowed: the part served where the frame
    arrived stops at the bound, the reader task serves the rest once there is room."""
    release = asyncio.Event()
    active = 0
    most = 0

    async def slow(sender: str, request: Request) -> Response:
        nonlocal active, most
        active += 1
        most = max(most, active)
        try:
            await release.wait()
        finally:
            active -= 1
        return Response(Status.OK, request.payload)

    limits = TransportLimits(
        backoff_initial=0.02,
        backoff_max=0.2,
        connect_timeout=2.0,
        max_inbound_pending_requests=3,
    )
    client, server = await pair(slow, limits)
    futures = [ask(client, server, b"%d" % i) for i in range(10)]  # frames of 1 and 9
    for _ in range(100):
        if active == 3:
            break
        await asyncio.sleep(0.01)
    assert active == 3
    assert server.stats()["backpressure_pauses"] >= 1
    release.set()
    answers = await asyncio.wait_for(asyncio.gather(*futures), LIMIT)
    assert [a.payload for a in answers] == [b"%d" % i for i in range(10)]
    assert most == 3
    assert server.stats()["requests_received"] == 10


async def test_a_malformed_frame_after_direct_ones_ends_only_its_stream(pair: Pair) -> None:
    client, server = await pair()
    assert (await asyncio.wait_for(ask(client, server, b"ok"), LIMIT)).payload == b"ok"
    # The same connection the direct path served: a frame that does not parse.
    conn = client._peers[server.address]
    assert conn._frames is not None
    assert conn._frames.write_now([b"\xff\xff\xff"])
    for _ in range(200):
        if server.stats()["malformed_frames"]:
            break
        await asyncio.sleep(0.01)
    assert server.stats()["malformed_frames"] == 1
    # The client reconnects; the server keeps serving.
    for _ in range(200):
        try:
            resp = await asyncio.wait_for(ask(client, server, b"again"), LIMIT)
        except Exception:
            await asyncio.sleep(0.02)
            continue
        assert resp.payload == b"again"
        break
    else:
        pytest.fail("the server stopped serving")


async def test_a_tasks_answer_is_written_when_it_finishes(pair: Pair) -> None:
    """A handler that returns a coroutine: its Task's answer goes out as it finishes (no
    writer wake-up and linger turn), and the answers of Tasks finishing in one turn still
    share a frame."""
    gate = asyncio.Event()

    async def later(sender: str, request: Request) -> Response:
        if request.command == "gated":
            await gate.wait()
        return Response(Status.OK, request.payload)

    client, server = await pair(later)
    before = server.stats()
    for i in range(5):
        await asyncio.sleep(0.001)
        resp = await asyncio.wait_for(ask(client, server, b"%d" % i), LIMIT)
        assert resp.payload == b"%d" % i
    after = server.stats()
    assert after["frames_sent"] - before["frames_sent"] == 5
    assert after["direct_frames"] - before["direct_frames"] == 5

    request = Request("t", "gated", b"k", b"g", 0, "", 5.0)
    futures = [client.request(server.address, request) for _ in range(50)]
    for _ in range(200):
        if server.stats()["requests_received"] == after["requests_received"] + 50:
            break
        await asyncio.sleep(0.01)
    gate.set()  # 50 Tasks finish in the same loop turn
    answers = await asyncio.wait_for(asyncio.gather(*futures), LIMIT)
    assert all(a.payload == b"g" for a in answers)
    gated = server.stats()
    assert gated["responses_sent"] - after["responses_sent"] == 50
    assert gated["frames_sent"] - after["frames_sent"] <= 3  # one at once, the rest joined
