"""``execute_many`` against a peer that answers batches badly, and batches past the budget.

The peer at ``b:1`` is a bare transport whose answers the test scripts: a batch answered
with an error status, with a payload that does not decode, or with a refusal of batches
(an older peer: one request per item then). Each key's reply from that peer must carry a
typed error (or the per-item answers), the quorum is counted from the healthy replica,
and the coordinator serves on. A batch larger than the frame budget is split.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from peer_ring.core import (
    Command,
    CommandContext,
    InvalidArgumentError,
    PeerRing,
    PeerRingConfig,
    RemoteError,
)
from peer_ring.core._batch import BATCH
from peer_ring.core._types import Request, Response, Status, TransferRequest
from peer_ring.core.testing import FakeClock, FixedDiscovery, MemoryNetwork, MemoryTransport
from peer_ring.core.transport import TransportLimits

pytestmark = pytest.mark.fake_time

A, B = "a:1", "b:1"
PUT = Command("put", mutates=True, hinted=False)
CONFIG = PeerRingConfig(
    partitions=4,
    replication=2,
    quorum=1,
    request_timeout=1.0,
    anti_entropy_interval=None,
    down_after=None,
)
ITEMS = [(b"k%d" % i, b"v") for i in range(6)]


async def no_transfer(source: str, request: TransferRequest) -> AsyncIterator[list[bytes]]:
    return
    yield


async def scripted_peer(
    net: MemoryNetwork, answer: Callable[[Request], Response]
) -> tuple[MemoryTransport, list[Request]]:
    seen: list[Request] = []

    def handle(source: str, request: Request) -> Response:
        if request.namespace.startswith("__peer_ring") and request.namespace != BATCH:
            return Response(Status.ERROR, b"", "no internal commands here")
        seen.append(request)
        return answer(request)

    transport = net.transport(B)
    await transport.start(handle, no_transfer)
    return transport, seen


async def coordinator(net: MemoryNetwork, clock: FakeClock) -> tuple[PeerRing, list[bytes]]:
    stored: list[bytes] = []

    def put(ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        stored.append(key)
        return b"stored"

    node = PeerRing(
        FixedDiscovery(A, [A, B]), config=CONFIG, transport=net.transport(A), clock=clock
    )
    node.register("t", PUT, put)
    await node.start()
    return node, stored


@pytest.mark.parametrize(
    ("answer", "error", "match"),
    [
        (Response(Status.ERROR, b"", "batch exploded"), RemoteError, "batch exploded"),
        (Response(Status.OK, b"\x00\x00\x00\x09garbage"), InvalidArgumentError, ""),
    ],
    ids=["error-status", "undecodable"],
)
async def test_a_bad_batch_answer_fails_each_key_at_that_peer_only(
    loop_clock: FakeClock, answer: Response, error: type[Exception], match: str
) -> None:
    net = MemoryNetwork(loop_clock)
    _, seen = await scripted_peer(net, lambda request: answer)
    node, stored = await coordinator(net, loop_clock)
    results = await node.execute_many("t", PUT, ITEMS)
    assert [r.ok for r in results] == [True] * len(ITEMS)  # W=1: the local copy suffices
    assert sorted(stored) == sorted(k for k, _ in ITEMS)
    assert [r.namespace for r in seen] == [BATCH]  # one batch request for all six keys
    for result in results:
        replies = {reply.node: reply for reply in await result.all_replies()}
        assert replies[A].error is None and replies[A].payload == b"stored"
        assert isinstance(replies[B].error, error), replies[B]
        assert match in str(replies[B].error)
    await node.stop()


async def test_a_peer_refusing_batches_gets_one_request_per_item(loop_clock: FakeClock) -> None:
    net = MemoryNetwork(loop_clock)

    def answer(request: Request) -> Response:
        if request.namespace == BATCH:
            return Response(Status.UNKNOWN_COMMAND, b"", "unknown command __peer_ring_batch__")
        return Response(Status.OK, b"b:" + request.key)

    _, seen = await scripted_peer(net, answer)
    node, _ = await coordinator(net, loop_clock)
    results = await node.execute_many("t", PUT, ITEMS, quorum=2)
    assert all(r.ok for r in results)
    assert [r.namespace for r in seen] == [BATCH] + ["t"] * len(ITEMS)
    for (key, _), result in zip(ITEMS, results, strict=True):
        assert sorted(result.payloads) == sorted([b"stored", b"b:" + key])
    await node.stop()


async def test_a_batch_over_the_frame_budget_is_split(loop_clock: FakeClock) -> None:
    net = MemoryNetwork(loop_clock)
    _, seen = await scripted_peer(net, lambda request: Response(Status.ERROR, b"", "counted only"))
    # max_message_bytes 2048 -> a frame budget of 1024 bytes: a few 300-byte items each.
    node = PeerRing(
        FixedDiscovery(A, [A, B]),
        config=PeerRingConfig(
            partitions=4,
            replication=2,
            quorum=1,
            anti_entropy_interval=None,
            down_after=None,
            transport_limits=TransportLimits(max_message_bytes=2048),
        ),
        transport=net.transport(A, limits=TransportLimits(max_message_bytes=2048)),
        clock=loop_clock,
    )
    node.register("t", PUT, lambda ctx, key, payload: b"")
    await node.start()
    items = [(b"key-%d" % i, b"p" * 300) for i in range(12)]
    results = await node.execute_many("t", PUT, items)
    assert all(r.ok for r in results)
    batches = [r for r in seen if r.namespace == BATCH]
    assert len(batches) > 1  # split, not one frame over the budget
    assert all(len(r.payload) <= 2048 for r in batches)
    await node.stop()
