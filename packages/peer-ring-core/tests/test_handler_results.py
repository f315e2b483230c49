"""What a node makes of its handlers' results, errors and time, and of bad batch frames.

The register() contract: a handler returns ``bytes`` (``bytearray`` and ``memoryview`` are
converted), anything else is refused with a message naming the type; a coroutine handler
is bounded by the request's timeout (then cancelled), and cancelled when its caller gives
up. Run on fake time, so the bounds are exact.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from peer_ring.core import (
    CommandContext,
    InvalidArgumentError,
    PeerRing,
    PeerRingConfig,
    RemoteError,
    RequestTimeoutError,
    UnknownCommandError,
)
from peer_ring.core._batch import BATCH, encode_items
from peer_ring.core._types import Request, Status, TransferRequest
from peer_ring.core.testing import FakeClock, FixedDiscovery, MemoryNetwork

pytestmark = pytest.mark.fake_time

ME = "n1:1"
CONFIG = PeerRingConfig(
    partitions=8, replication=1, request_timeout=2.0, anti_entropy_interval=None
)


@pytest.fixture
async def net(loop_clock: FakeClock) -> MemoryNetwork:
    return MemoryNetwork(loop_clock)


@pytest.fixture
async def node(net: MemoryNetwork, loop_clock: FakeClock) -> AsyncIterator[PeerRing]:
    node = PeerRing(
        FixedDiscovery(ME, [ME]), config=CONFIG, transport=net.transport(ME), clock=loop_clock
    )
    yield node
    await node.stop()


def returning(value: object) -> Callable[[CommandContext, bytes, bytes], object]:
    return lambda ctx, key, payload: value


def returning_later(value: object) -> Callable[[CommandContext, bytes, bytes], Any]:
    async def handler(ctx: CommandContext, key: bytes, payload: bytes) -> object:
        await asyncio.sleep(0)
        return value

    return handler


@pytest.mark.parametrize("wrap", [returning, returning_later], ids=["plain", "coroutine"])
async def test_bytes_like_results_are_converted_and_others_refused(
    node: PeerRing, wrap: Callable[[object], Any]
) -> None:
    node.register("t", "bytes", wrap(b"b"))
    node.register("t", "bytearray", wrap(bytearray(b"ba")))
    node.register("t", "memoryview", wrap(memoryview(b"xmvx")[1:3]))
    node.register("t", "str", wrap("text"))
    node.register("t", "none", wrap(None))
    await node.start()
    for name, expected in [("bytes", b"b"), ("bytearray", b"ba"), ("memoryview", b"mv")]:
        result = await node.call(ME, "t", name, b"k")
        assert result == expected and type(result) is bytes, name
    for name, kind in [("str", "str"), ("none", "NoneType")]:
        with pytest.raises(RemoteError, match=f"handler returned {kind}, not bytes"):
            await node.call(ME, "t", name, b"k")
    # The same through the replicated path (execute): one reply, converted or failed.
    result = await node.execute("t", "memoryview", b"k")
    assert result.payloads == [b"mv"]


async def test_a_slow_coroutine_handler_is_cancelled_at_the_timeout(
    node: PeerRing, loop_clock: FakeClock
) -> None:
    outcome: list[str] = []

    async def slow(ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            outcome.append(f"cancelled at {loop_clock.monotonic() - start:g}")
            raise
        return b"never"

    node.register("t", "slow", slow)
    await node.start()
    start = loop_clock.monotonic()
    with pytest.raises(RequestTimeoutError, match=f"handler on {ME} timed out after 0.5s"):
        await node.call(ME, "t", "slow", b"k", timeout=0.5)
    assert outcome == ["cancelled at 0.5"]
    # Without a timeout of its own, the node's request_timeout bounds it.
    start = loop_clock.monotonic()
    with pytest.raises(RequestTimeoutError, match="timed out after 2s"):
        await node.call(ME, "t", "slow", b"k")
    assert outcome[-1] == "cancelled at 2"


async def test_a_caller_giving_up_cancels_the_running_handler(node: PeerRing) -> None:
    started = asyncio.Event()
    outcome: list[str] = []

    async def waits(ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        return b"never"

    node.register("t", "waits", waits)
    await node.start()
    caller = asyncio.ensure_future(node.call(ME, "t", "waits", b"k", timeout=30))
    await started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.sleep(0)
    assert outcome == ["cancelled"]  # not left running until its own deadline


async def test_a_coroutine_handler_error_keeps_its_type(node: PeerRing) -> None:
    async def refuses(ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        await asyncio.sleep(0)
        raise InvalidArgumentError("payload must be JSON")

    node.register("t", "refuses", refuses)
    await node.start()
    with pytest.raises(InvalidArgumentError, match="payload must be JSON"):
        await node.call(ME, "t", "refuses", b"k")


async def no_transfer(source: str, request: TransferRequest) -> AsyncIterator[list[bytes]]:
    return
    yield


async def test_malformed_or_reserved_batches_get_a_typed_refusal(
    node: PeerRing, net: MemoryNetwork
) -> None:
    handled: list[bytes] = []
    node.register("t", "put", lambda ctx, key, payload: handled.append(key) or b"")
    await node.start()
    raw = net.transport("raw:1")
    await raw.start(lambda source, request: None, no_transfer)  # type: ignore[arg-type,return-value]
    garbage = await raw.request(ME, Request(BATCH, "put", b"", b"\x00\x05ab", 0, "", 1.0))
    assert garbage.status is Status.INVALID_ARGUMENT
    reserved = encode_items("__peer_ring_x", [(b"k", b"v", 0, "")])
    refused = await raw.request(ME, Request(BATCH, "put", b"", reserved, 0, "", 1.0))
    assert refused.status is Status.INVALID_ARGUMENT
    assert "namespace '__peer_ring_x' is reserved" in refused.error
    # The node serves on, and a well-formed batch of the same command runs.
    good = encode_items("t", [(b"k1", b"v", 0, ""), (b"k2", b"v", 0, "")])
    assert (await raw.request(ME, Request(BATCH, "put", b"", good, 0, "", 1.0))).status is Status.OK
    assert handled == [b"k1", b"k2"]
    await raw.close()


async def test_a_hint_applied_here_gets_the_same_typed_errors(node: PeerRing) -> None:
    # A hint whose target left the cluster is applied on a node that now replicates its
    # key (the sync layer calls the dispatcher's local_write): its failures must keep
    # their type, so the hint layer can tell a refusal from a bug.
    stored: dict[bytes, bytes] = {}

    def put(ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        if not payload:
            raise InvalidArgumentError("empty value")
        stored[key] = payload
        return b""

    async def put_later(ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        await asyncio.sleep(0)
        raise RuntimeError("disk full")

    node.register("t", "put", put)
    node.register("t", "put_later", put_later)
    await node.start()
    local_write = node._dispatcher.local_write
    await local_write("t", "put", b"k", b"v")
    assert stored == {b"k": b"v"}
    with pytest.raises(InvalidArgumentError, match="empty value"):
        await local_write("t", "put", b"k", b"")
    with pytest.raises(RemoteError, match="disk full"):
        await local_write("t", "put_later", b"k", b"v")
    with pytest.raises(UnknownCommandError):
        await local_write("t", "nope", b"k", b"v")
    assert stored == {b"k": b"v"}
