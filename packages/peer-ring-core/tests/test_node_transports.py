"""PeerRing clusters on loopback over each transport (real gRPC, and TCP with
``config.transport="tcp"``, the ``transport_kind`` fixture): 127.0.0.1/.2/.3 with one port,
and one IP with many ports."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from peer_ring.core import (
    CommandContext,
    InvalidArgumentError,
    MessageTooLargeError,
    PeerRing,
    PeerRingConfig,
    PeerUnavailableError,
    QuorumNotReachedError,
    UnknownCommandError,
)
from peer_ring.core.testing import free_port
from peer_ring.core.transport import TransportLimits
from peer_ring.discovery.static import StaticDiscovery

LIMITS = TransportLimits(max_message_bytes=256 * 1024, connect_timeout=1.0, backoff_max=0.2)
CONFIG = PeerRingConfig(partitions=128, request_timeout=2.0, transport_limits=LIMITS)


class Echo:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def put(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        self.data[key] = payload
        return payload

    def big(self, ctx: CommandContext, key: bytes, payload: bytes) -> bytes:
        return b"x" * (LIMITS.max_message_bytes + 1)


async def start_cluster(
    peers: list[str], transport_kind: str
) -> tuple[list[PeerRing], dict[str, Echo]]:
    nodes, apps = [], {}
    config = replace(CONFIG, transport=transport_kind)
    try:
        for address in peers:
            node = PeerRing(StaticDiscovery(peers, self_address=address), config=config)
            app = Echo()
            node.register("t", "put", app.put)
            node.register("t", "big", app.big)
            await node.start()
            nodes.append(node)
            apps[address] = app
    except BaseException:
        # Another process may take a port between free_port() and the bind (parallel runs
        # on a shared machine): stop the nodes already listening, or their listening
        # sockets are left open ("unclosed socket" ResourceWarning, an error here).
        for node in nodes:
            await node.stop()
        raise
    return nodes, apps


@pytest.fixture(params=["many-ips-one-port", "one-ip-many-ports"])
async def cluster(
    request: pytest.FixtureRequest, transport_kind: str
) -> AsyncIterator[tuple[list[PeerRing], dict[str, Echo]]]:
    if request.param == "many-ips-one-port":
        hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
        port = free_port(*hosts)
        peers = [f"{h}:{port}" for h in hosts]
    else:
        peers = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    nodes, apps = await start_cluster(peers, transport_kind)
    yield nodes, apps
    for node in nodes:
        await node.stop()


async def test_replicated_command_with_quorum(
    cluster: tuple[list[PeerRing], dict[str, Echo]],
) -> None:
    nodes, apps = cluster
    for i in range(20):
        key = f"user:{i}".encode()
        result = await nodes[i % 3].execute("t", "put", key, b"v%d" % i, replication=3, quorum=2)
        assert len(result.ok_replies) >= 2
        replies = await result.all_replies()
        assert sorted(r.payload for r in replies) == [b"v%d" % i] * 3
        assert all(app.data[key] == b"v%d" % i for app in apps.values())


async def connect_to_all(node: PeerRing, attempts: int = 20) -> None:
    """Open ``node``'s connections to every peer, then check them with a write answered by
    all three; up to ``attempts`` connection attempts per peer.

    A loaded CI machine once took longer than the 1 s connect_timeout of LIMITS for a
    first connection: tests of something else than connection set-up connect first. Each
    ``connect`` waits for a real attempt (a request made while the connection is down, in
    its reconnect backoff, fails at once: 20 of those once fit in one backoff).
    """
    for peer in node.members:
        if peer == node.address:
            continue
        for attempt in range(attempts):
            try:
                await node.transport.connect(peer)
                break
            except PeerUnavailableError:
                if attempt == attempts - 1:
                    raise
    await node.execute("t", "put", b"warm-up", b"w", quorum=3, timeout=10.0)


@pytest.mark.parametrize("in_flight", [64, 256])
async def test_many_in_flight_from_every_node(
    cluster: tuple[list[PeerRing], dict[str, Echo]], in_flight: int
) -> None:
    nodes, _ = cluster
    # What is tested is the matching of many replies in flight on established connections,
    # not connection set-up under load: connect every pair first.
    for node in nodes:
        await connect_to_all(node)

    async def one(node: PeerRing, i: int) -> None:
        payload = f"{node.address}/{i}".encode()
        result = await node.execute("t", "put", payload, payload, quorum=3, timeout=30.0)
        # every reply is the answer to this request, not to another one in flight
        assert result.payloads == [payload] * 3

    await asyncio.wait_for(
        asyncio.gather(*(one(node, i) for node in nodes for i in range(in_flight))), 120
    )


async def test_bad_input_leaves_the_node_serving(
    cluster: tuple[list[PeerRing], dict[str, Echo]],
) -> None:
    nodes, _ = cluster
    a, b = nodes[0], nodes[1]
    with pytest.raises(InvalidArgumentError):
        await a.execute("t", "put", b"k", b"v", replication=2, quorum=3)
    with pytest.raises(QuorumNotReachedError, match="unknown command nope/x"):
        await a.execute("nope", "x", b"k", b"v", quorum=2)
    with pytest.raises(UnknownCommandError):
        await a.call(b.address, "t", "missing", b"k")
    with pytest.raises(MessageTooLargeError):
        await a.call(b.address, "t", "put", b"k", b"x" * (LIMITS.max_message_bytes + 1))
    with pytest.raises(MessageTooLargeError):
        await a.call(b.address, "t", "big", b"k")
    result = await a.execute("t", "put", b"k", b"still-fine", quorum=3)
    assert result.payloads == [b"still-fine"] * 3


async def test_peer_down_fails_within_the_deadline_with_a_clear_error(
    cluster: tuple[list[PeerRing], dict[str, Echo]],
) -> None:
    nodes, _ = cluster
    a, _, c = nodes
    # a's connection to b must not be opened after c stopped (the quorum-2 write below
    # failed once on a 1 s connect_timeout to b at load 20): a reaches both first.
    await connect_to_all(a)
    await c.stop()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(QuorumNotReachedError) as info:
        await a.execute("t", "put", b"k", b"v", quorum=3, timeout=2.0)
    assert loop.time() - started < 2.5
    assert c.address in info.value.failures
    assert isinstance(info.value.failures[c.address], PeerUnavailableError)
    # quorum 2 still succeeds, and the node answers the next request correctly
    result = await a.execute("t", "put", b"k", b"v2", quorum=2)
    assert result.payloads == [b"v2", b"v2"]


def test_readme_example_runs(run_example: Callable[..., str]) -> None:
    example = Path(__file__).parents[1] / "examples" / "three_nodes.py"
    out = run_example(example, 3)  # the example binds port, port + 1, port + 2
    assert "all replies:" in out
