"""The Redis test component, and peer-ring's KV store compared with a real Redis.

Runs in the normal suite against ``redis-server`` (the binary .ci/run installs), and once
more in CI's container step with ``PEER_RING_COMPONENTS=container`` (testcontainers): the
same tests, both paths (testing_components/).
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis

from peer_ring.core import PeerRingConfig
from peer_ring.core.testing import FakeClock, FixedDiscovery, MemoryNetwork, settle_loop
from peer_ring.kv import KVStore
from testing_components import (
    COMPONENTS_ENV,
    ContainerNotReadyError,
    RedisEndpoint,
    components_mode,
    redis_binary,
    redis_via_binary,
)
from testing_components.redis import INSTALL_HINT

RequireComponent = Callable[..., None]

PEERS = [f"127.0.0.{i}:7101" for i in range(1, 4)]


@pytest.fixture
def client(redis_server: RedisEndpoint) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(redis_server.url, socket_timeout=5)
    conn.flushall()
    yield conn
    conn.close()


def test_the_server_is_real_and_from_the_chosen_path(
    redis_server: RedisEndpoint, client: redis.Redis
) -> None:
    assert client.ping() is True
    assert client.info("server")["redis_version"] == redis_server.version
    assert redis_server.host == "127.0.0.1"  # loopback only, container or not
    mode = components_mode()
    if mode != "auto":
        assert redis_server.via == mode, f"{COMPONENTS_ENV}={mode} but got {redis_server.via}"


def test_expiry_is_real(client: redis.Redis) -> None:
    client.set("k", b"v", px=60_000)
    ttl = client.pttl("k")
    assert 0 < ttl <= 60_000
    client.persist("k")
    assert client.pttl("k") == -1


def test_mode_typo_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(COMPONENTS_ENV, "containers")
    with pytest.raises(ValueError, match="expected one of auto, binary, container"):
        components_mode()


def test_binary_that_dies_fails_with_its_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\necho 'fake redis: cannot start' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    expected = r"exited with status 3(.|\n)*cannot start"
    with pytest.raises(ContainerNotReadyError, match=expected), redis_via_binary(deadline=10):
        pass  # pragma: no cover


def test_binary_server_is_stopped_after_the_block(require_component: RequireComponent) -> None:
    # Whatever PEER_RING_COMPONENTS says: this is the binary path's own clean-up.
    require_component("redis-server", redis_binary() is not None, INSTALL_HINT)
    with redis_via_binary() as endpoint:
        port = endpoint.port
        assert redis.Redis(port=port).ping()
    # Nothing listens there any more: the server was stopped, not left behind.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


# -- peer-ring's KV store against Redis: same operations, same answers -----------------------


@pytest.fixture
async def kv() -> AsyncIterator[KVStore]:
    clock = FakeClock()
    network = MemoryNetwork(clock)
    config = PeerRingConfig(partitions=64, request_timeout=1.0)
    stores = [
        KVStore(
            FixedDiscovery(a, PEERS), config=config, transport=network.transport(a), clock=clock
        )
        for a in PEERS
    ]
    for store in stores:
        await store.start()
    await asyncio.gather(*(s.wait_ready() for s in stores))
    await settle_loop()
    yield stores[0]
    for store in stores:
        await store.stop()


async def test_kv_store_answers_like_redis(kv: KVStore, client: redis.Redis) -> None:
    """400 random set/get/delete/mget operations over 12 keys: every answer equal."""
    rng = random.Random(20261207)
    keys = [f"key:{i}" for i in range(12)]
    values = [b"", b"\x00\xff binary", b"x" * 3000, *(f"v{i}".encode() for i in range(8))]
    for step in range(400):
        op = rng.choice(("set", "set", "get", "get", "delete", "mget"))
        key = rng.choice(keys)
        if op == "set":
            value = rng.choice(values)
            client.set(key, value)
            await kv.set(key, value, quorum=2)
        elif op == "get":
            expected = client.get(key)
            assert await kv.get(key, quorum=2) == expected, f"step {step}: get {key}"
        elif op == "delete":
            client.delete(key)
            await kv.delete(key, quorum=2)
        else:
            some = rng.sample(keys, 5)
            from_redis = {
                k: v for k, v in zip(some, client.mget(some), strict=True) if v is not None
            }
            assert await kv.mget(some, quorum=2) == from_redis, f"step {step}: mget {some}"
    # And the end state, key by key.
    for key in keys:
        assert await kv.get(key, quorum=2) == client.get(key), key
