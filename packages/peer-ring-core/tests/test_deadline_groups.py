"""Outbound deadlines per group of requests, not per request (issue 23, round 5).

A connection's requests whose deadlines fall in the same tick, made one after the other,
share one entry of the deadline wheel (a ``DeadlineGroup``). The guarantees of a deadline
per request stay: never early, at most one tick late, only the unanswered requests of a
group fail, a group answered in full leaves the wheel (no timer, nothing kept), and a
request made after its tick's group was settled gets a deadline of its own.

The connection is driven without a network: it never opens its stream (requests stay
queued, as while connecting), answers are handed to its reader's ``_on_responses`` as the
peer's frame would carry them, and a fake clock moves time. Resolution 0.5 s keeps every
tick boundary exact in binary floating point.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from peer_ring.core import RequestTimeoutError
from peer_ring.core._types import Response
from peer_ring.core.proto import peer_ring_pb2 as pb
from peer_ring.core.testing import FakeClock
from peer_ring.core.transport import TransportLimits
from peer_ring.core.transport._deadlines import DeadlineWheel
from peer_ring.core.transport._outbound import OutboundCall, PeerConnection
from peer_ring.core.transport._stats import TransportStats


class Owner:
    def __init__(self) -> None:
        self.answers: list[tuple[str, bytes]] = []
        self.failures: list[tuple[str, BaseException | None]] = []

    def answered(self, target: str, hint: str, payload: bytes) -> None:
        self.answers.append((hint, payload))

    def on_response(self, target: str, hint: str, response: Response) -> None:
        raise AssertionError("no error answers in these tests")

    def on_done(self, target: str, hint: str, fut: asyncio.Future[Response]) -> None:
        self.failures.append((hint, None if fut.cancelled() else fut.exception()))


def connection(clock: FakeClock) -> tuple[PeerConnection, DeadlineWheel, TransportStats]:
    wheel = DeadlineWheel(clock, resolution=0.5)
    stats = TransportStats()
    conn = PeerConnection(
        "peer:1",
        None,  # type: ignore[arg-type]  # never used: the stream is never opened
        metadata=(),
        limits=TransportLimits(),
        clock=clock,
        rng=random.Random(0),
        wheel=wheel,
        stats=stats,
        on_reachability=lambda peer, up: None,
    )
    # A started connection that is still connecting: requests queue, nothing is written.
    conn._task = asyncio.get_running_loop().create_future()  # type: ignore[assignment]
    return conn, wheel, stats


def send(conn: PeerConnection, owner: Owner, hint: str, timeout: float) -> None:
    conn.submit(owner, hint, "ns", "cmd", b"k", b"v", 0, timeout)


def answer(conn: PeerConnection, *rids: int) -> None:
    for rid in rids:
        conn._calls[rid].sent = True  # written, as the writer would have marked it
    conn._on_responses([pb.Response(id=rid, payload=b"a%d" % rid) for rid in rids])


def items(wheel: DeadlineWheel) -> list[Any]:
    return [item for members in wheel._ticks.values() for item in members]


async def test_requests_of_one_tick_share_one_wheel_entry_and_only_the_unanswered_fail() -> None:
    clock = FakeClock(start=0.0)
    conn, wheel, stats = connection(clock)
    owner = Owner()
    for i in range(5):
        send(conn, owner, f"r{i + 1}", 1.0)  # ids 1..5, all in tick 3 (ends at t=1.5)
    assert len(items(wheel)) == 1  # one group, not five entries
    answer(conn, 2, 4)
    assert owner.answers == [("r2", b"a2"), ("r4", b"a4")]
    clock.advance(1.4999)
    await asyncio.sleep(0)
    assert owner.failures == []  # never early
    clock.advance(0.0001)
    await asyncio.sleep(0)  # failures reach the owner through the loop
    assert [hint for hint, _ in owner.failures] == ["r1", "r3", "r5"]
    assert all(isinstance(exc, RequestTimeoutError) for _, exc in owner.failures)
    assert stats.timeouts == 3
    assert conn._calls == {} and wheel._ticks == {}


async def test_a_group_answered_in_full_leaves_the_wheel_once_its_tick_is_not_current() -> None:
    clock = FakeClock(start=0.0)
    conn, wheel, _ = connection(clock)
    owner = Owner()
    for i in range(3):
        send(conn, owner, f"r{i + 1}", 1.0)
    answer(conn, 1, 2, 3)
    # Still the current group: a later request of its tick joins it (no new wheel entry).
    assert len(items(wheel)) == 1
    send(conn, owner, "late", 1.0)
    assert len(items(wheel)) == 1
    clock.advance(1.5)
    await asyncio.sleep(0)
    assert [hint for hint, _ in owner.failures] == ["late"]
    assert len(owner.answers) == 3
    assert wheel._ticks == {}


async def test_a_settled_group_leaves_the_wheel_when_the_tick_changes() -> None:
    clock = FakeClock(start=0.0)
    conn, wheel, _ = connection(clock)
    owner = Owner()
    send(conn, owner, "a", 1.0)  # id 1, tick 3
    answer(conn, 1)
    clock.advance(0.5)  # t = 0.5: a request now lands in tick 4
    send(conn, owner, "b", 1.0)
    assert len(items(wheel)) == 1  # the settled group of tick 3 left, tick 4's is in
    send(conn, owner, "c", 1.0)  # same tick: the same group
    answer(conn, 3)
    clock.advance(1.5)
    await asyncio.sleep(0)
    assert [hint for hint, _ in owner.failures] == ["b"]
    assert [hint for hint, _ in owner.answers] == ["a", "c"]


async def test_interleaved_timeouts_each_expire_at_their_own_tick() -> None:
    clock = FakeClock(start=0.0)
    conn, wheel, _ = connection(clock)
    owner = Owner()
    for hint, timeout in [("s1", 1.0), ("l1", 3.0), ("s2", 1.0), ("l2", 3.0), ("s3", 1.0)]:
        send(conn, owner, hint, timeout)  # s: tick 3 (t=1.5), l: tick 7 (t=3.5)
    assert len(items(wheel)) == 5  # the tick changes with every request: a group each
    clock.advance(1.5)
    await asyncio.sleep(0)
    assert sorted(hint for hint, _ in owner.failures) == ["s1", "s2", "s3"]
    clock.advance(1.9999)
    await asyncio.sleep(0)
    assert len(owner.failures) == 3  # never early
    clock.advance(0.0001)
    await asyncio.sleep(0)
    assert sorted(hint for hint, _ in owner.failures) == ["l1", "l2", "s1", "s2", "s3"]
    assert conn._calls == {}


async def test_a_cancelled_request_leaves_its_group_and_the_others_still_expire() -> None:
    clock = FakeClock(start=0.0)
    conn, wheel, _ = connection(clock)
    calls: list[OutboundCall] = []
    for i in range(3):
        fut = conn.submit(None, f"c{i}", "ns", "cmd", b"k", b"", 0, 1.0)
        assert isinstance(fut, OutboundCall)
        calls.append(fut)
    assert calls[1].cancel()
    assert len(items(wheel)) == 1
    clock.advance(1.5)
    await asyncio.sleep(0)
    assert calls[1].cancelled()
    for fut in (calls[0], calls[2]):
        assert isinstance(fut.exception(), RequestTimeoutError)
    assert wheel._ticks == {}


async def test_shutdown_settles_every_group() -> None:
    clock = FakeClock(start=0.0)
    conn, wheel, _ = connection(clock)
    owner = Owner()
    for hint, timeout in [("a", 1.0), ("b", 2.0), ("c", 1.0)]:
        send(conn, owner, hint, timeout)
    assert len(items(wheel)) == 3
    conn.shutdown(lambda: ConnectionError("gone"))
    await asyncio.sleep(0)
    assert sorted(hint for hint, _ in owner.failures) == ["a", "b", "c"]
    assert items(wheel) == []
    clock.advance(5.0)
    await asyncio.sleep(0)
    assert len(owner.failures) == 3  # nothing expires twice
