"""Review of one fetch out per partition for a group subscription (3d106bf), over real
TCP and gRPC between in-process nodes on loopback.

Round 7 kept two fetches out per partition and handed their replies out in the order sent;
3d106bf went back to one. What a group consumer relies on, checked here with publishers
on the other nodes and a small ``max_in_flight`` (many fetch rounds per partition):

- every acknowledged publish is delivered to the group, each exactly once while no
  ``ack_wait`` expires, in publish order per key (a partition's order);
- a consumer that closes while its long-polls are parked loses nothing: what was
  published after it closed reaches the group's next consumer (within its ``ack_wait``
  when a parked fetch had claimed it for the closed consumer).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from peer_ring.core import PeerRingConfig
from peer_ring.core.testing import FixedDiscovery, free_port
from peer_ring.core.transport import TransportLimits
from peer_ring.pubsub import PubSub

#: Upper bound of any single wait (real seconds). Only reached on a bug.
LIMIT = 60.0
PARTITIONS = 4
KEYS = [f"k{i}" for i in range(6)]


def config(transport: str) -> PeerRingConfig:
    return PeerRingConfig(
        partitions=64,
        replication=3,
        quorum=2,
        request_timeout=2.0,
        transport=transport,
        down_after=None,
        anti_entropy_interval=None,
        transport_limits=TransportLimits(connect_timeout=5.0, backoff_max=0.2),
    )


async def bounded(aw: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(aw, LIMIT)


async def eventually(predicate: Callable[[], bool], within: float = LIMIT) -> None:
    """Poll a condition of real nodes (there is no event to wait for), bounded in time."""
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


@pytest.fixture(params=["tcp", "grpc"])
async def nodes(request: pytest.FixtureRequest) -> AsyncIterator[list[PubSub]]:
    """Three started PubSub nodes (R3/Q2) over the parametrized transport."""
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    made = [
        PubSub(
            FixedDiscovery(a, addresses),
            replication=3,
            quorum=2,
            config=config(str(request.param)),
            timeout=15.0,
        )
        for a in addresses
    ]
    try:
        for ps in made:
            await ps.start()
        await eventually(lambda: all(ps.node.ready for ps in made))
        yield made
    finally:
        for ps in made:
            await ps.stop()


async def publish_in_order(ps: PubSub, key: str, count: int, tag: str) -> list[bytes]:
    """Publish ``count`` messages of ``key`` one after the other; the acknowledged ones."""
    topic = ps.topic("orders", partitions=PARTITIONS)
    acked = []
    for i in range(count):
        data = f"{tag}:{key}:{i:04d}".encode()
        await topic.publish(data, key=key, msg_id=data.decode())
        acked.append(data)
    return acked


async def test_a_group_gets_every_acknowledged_publish_once_in_key_order(
    nodes: list[PubSub],
) -> None:
    a, b, c = nodes
    topic = b.topic("orders", partitions=PARTITIONS)
    got: list[bytes] = []
    total = 2 * len(KEYS) * 40
    async with topic.subscribe(group="g", max_in_flight=8, ack_wait=30.0) as sub:

        async def consume() -> None:
            while len(got) < total:
                msg = await sub.next(timeout=LIMIT)
                assert msg is not None, f"only {len(got)} of {total} delivered"
                got.append(msg.data)
                await msg.ack()

        consumer = asyncio.ensure_future(consume())
        published = await bounded(
            asyncio.gather(
                *(publish_in_order(a, k, 40, "a") for k in KEYS),
                *(publish_in_order(c, k, 40, "c") for k in KEYS),
            )
        )
        await bounded(consumer)
        health = sub.health()
    acked = [m for batch in published for m in batch]
    assert sorted(got) == sorted(acked)  # all of them, each once
    for batch in published:  # one publisher's messages of one key: publish order
        mine = set(batch)
        assert [m for m in got if m in mine] == batch
    assert health.redelivered == 0 and health.expired == 0
    assert health.delivered == health.acked == total


async def test_a_consumer_closing_with_parked_long_polls_loses_nothing(
    nodes: list[PubSub],
) -> None:
    a, b, c = nodes
    topic = b.topic("orders", partitions=PARTITIONS)
    first = await bounded(publish_in_order(a, "x", 5, "before"))
    seen: list[bytes] = []
    async with topic.subscribe(group="g", max_in_flight=4, ack_wait=2.0) as sub:
        for _ in first:
            msg = await sub.next(timeout=LIMIT)
            assert msg is not None
            seen.append(msg.data)
            await msg.ack()
        # Nothing more published: its fetches are parked at the sequencers now.
        assert await sub.next(timeout=0.3) is None
    assert seen == first
    later = await bounded(asyncio.gather(*(publish_in_order(c, k, 10, "after") for k in KEYS[:3])))
    expected = {m for batch in later for m in batch}
    got: set[bytes] = set()
    async with a.topic("orders", partitions=PARTITIONS).subscribe(
        group="g", max_in_flight=16, ack_wait=2.0
    ) as sub2:
        while len(got) < len(expected):
            # Up to one ack_wait (2 s) late: a fetch parked by the closed consumer that
            # claimed messages before the sequencer heard of its release.
            msg = await sub2.next(timeout=LIMIT)
            assert msg is not None, f"{len(expected - got)} never delivered"
            assert msg.data in expected, msg.data  # nothing acked before comes back
            got.add(msg.data)
            await msg.ack()
    assert got == expected
