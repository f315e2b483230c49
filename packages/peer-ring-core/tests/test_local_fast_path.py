"""The coordinator's fast path for a key only this node replicates, and the partition a
replica's handler sees (issue 23, step 3), on the in-memory network.

A key whose preference list is this node alone (replication 1 on an owned key) runs its
handler inline with no request to any peer; everything that is not a plain success (an
error, an awaitable handler, a refusal to forward) must behave exactly as on the general
path.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from peer_ring.core import (
    Command,
    CommandContext,
    PeerRing,
    PeerRingConfig,
    QuorumNotReachedError,
    RemoteError,
    partition_for_key,
)
from peer_ring.core._types import Request, Status

P = 32
ADDRS = [f"127.0.0.{i}:7401" for i in range(1, 4)]
PUT = Command("put", mutates=True)
SLOW = Command("slow", mutates=True)
BOOM = Command("boom", mutates=True)


class App:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.partitions: list[int] = []

    def put(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        self.partitions.append(ctx.partition)
        self.data[key] = payload
        return b"stored:" + payload

    async def slow(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        await asyncio.sleep(0)
        self.data[key] = payload
        return b"slow:" + payload

    def boom(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        raise RuntimeError("handler exploded")


#: ``app_cluster(...)``: an ``AppCluster`` of conftest.py.
Cluster = Any
#: ``memory_config(partitions, replication)`` of conftest.py.
ConfigFactory = Callable[[int, int], PeerRingConfig]


@pytest.fixture
def cluster(app_cluster: Callable[..., Cluster], memory_config: ConfigFactory) -> Cluster:
    """The nodes of ``ADDRS`` on one in-memory network, each with an ``App`` under ``"t"``."""
    handlers = {PUT: App.put, SLOW: App.slow, BOOM: App.boom}
    return app_cluster(memory_config(P, 1), lambda node: App(), handlers)


def owned_key(node: PeerRing) -> bytes:
    for i in range(10_000):
        key = f"key:{i}".encode()
        if node.preference_list(key, 1) == (node.address,):
            return key
    raise AssertionError("no key owned by the node")


async def test_an_owned_key_at_replication_1_runs_inline_and_completes(cluster: Cluster) -> None:
    a, _, _ = await cluster.start_ready(ADDRS)
    key = owned_key(a)
    sent = cluster.count_requests(a)
    result = await a.execute("t", PUT, key, b"v")
    assert result.ok and result.complete
    assert [(r.node, r.payload) for r in result.replies] == [(a.address, b"stored:v")]
    assert result.preference_list == (a.address,)
    assert result.partition == partition_for_key(key, P)
    assert cluster.apps[a.address].data[key] == b"v"
    seen: list[list[str]] = []
    result.on_complete(lambda replies: seen.append([r.node for r in replies]))
    assert seen == [[a.address]]  # already complete: called at once
    assert sum(sent.values()) == 0  # no peer was asked


async def test_a_failing_handler_on_the_fast_path_fails_the_quorum_like_elsewhere(
    cluster: Cluster,
) -> None:
    a, _, _ = await cluster.start_ready(ADDRS)
    key = owned_key(a)
    with pytest.raises(QuorumNotReachedError) as info:
        await a.execute("t", BOOM, key, b"")
    failures: dict[str, BaseException] = info.value.failures
    assert list(failures) == [a.address]
    assert isinstance(failures[a.address], RemoteError)
    assert "handler exploded" in str(failures[a.address])


async def test_an_awaitable_handler_on_an_owned_key_is_awaited(cluster: Cluster) -> None:
    a, _, _ = await cluster.start_ready(ADDRS)
    key = owned_key(a)
    result = await a.execute("t", SLOW, key, b"x")
    assert result.payloads == [b"slow:x"]
    assert result.complete
    assert cluster.apps[a.address].data[key] == b"x"


async def test_a_key_owned_elsewhere_still_goes_to_its_owner(cluster: Cluster) -> None:
    a, b, _ = await cluster.start_ready(ADDRS)
    key = owned_key(b)
    sent = cluster.count_requests(a)
    result = await a.execute("t", PUT, key, b"w")
    assert [r.node for r in result.replies] == [b.address]
    assert sent == Counter({b.address: 1})
    assert cluster.apps[b.address].data[key] == b"w"
    assert key not in cluster.apps[a.address].data


async def test_a_replica_handler_sees_its_own_partition_not_the_senders_claim(
    cluster: Cluster,
) -> None:
    a, b, _ = await cluster.start_ready(ADDRS)
    key = owned_key(b)
    right = partition_for_key(key, P)
    wrong = (right + 1) % P
    request = Request("t", PUT.name, key, b"z", wrong, "", 1.0)
    response = await a.transport.request(b.address, request)
    assert response.status == Status.OK
    assert cluster.apps[b.address].partitions == [right]
    # Its own run (the fast path) passes the partition it computed itself.
    await b.execute("t", PUT, key, b"again")
    assert cluster.apps[b.address].partitions == [right, right]
