"""Fixtures shared by the KV store's tests: stores on the in-memory network.

Test modules cannot import each other (``--import-mode=importlib``), so the cluster that many
of them build is a factory fixture here::

    @pytest.fixture
    async def cluster(start_stores: Callable[..., Awaitable[list[KVStore]]]) -> list[KVStore]:
        return await start_stores(PEERS, config=CONFIG, replication=3)

(the annotation is spelled out: a test module cannot import ``StartStores`` from here either).

``serve_http(api)`` serves a ``KVHttpApi`` on a free loopback port and returns its URL and an
``aiohttp`` session, both closed after the test (before the stores stop).

``digest_deferral(mode)`` is a context manager: the engine's digest deferral thresholds as
shipped (``"default"``) or at their smallest (``"eager"``); session-scoped, so hypothesis
tests can take it.

``clock`` and ``network`` are the ones the stores share; a module that defines its own
``clock`` fixture gets stores on that clock (pytest resolves it from the test's module).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any
from unittest import mock

import pytest

from peer_ring.core import PeerRingConfig
from peer_ring.core.testing import FakeClock, FixedDiscovery, MemoryNetwork, settle_loop
from peer_ring.kv import KVStore, _engine, _engine_partitions, _engine_wire

#: The ``start_stores`` fixture: ``await start_stores(peers, config=..., **KVStore kwargs)``.
StartStores = Callable[..., Awaitable[list[KVStore]]]
#: The ``serve_http`` fixture: ``url, session = await serve_http(api)``.
ServeHttp = Callable[[Any], Awaitable[tuple[str, Any]]]


@contextmanager
def _deferral(mode: str) -> Iterator[None]:
    """The digest deferral's thresholds: as shipped, or at their smallest ("eager")."""
    if mode == "default":
        yield
        return
    with (
        mock.patch.object(_engine, "_BUDGET_MIN", 0),
        mock.patch.object(_engine_partitions, "_BUDGET_MIN", 0),
        mock.patch.object(_engine, "_DEFER_MAX", 2),
        mock.patch.object(_engine_wire, "_DEFER_MAX", 2),
        mock.patch.object(_engine_partitions, "_DEFER_MAX", 2),
    ):
        yield


@pytest.fixture(scope="session")
def digest_deferral() -> Callable[[str], AbstractContextManager[None]]:
    """``with digest_deferral("eager"): ...`` (or ``"default"``)."""
    return _deferral


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def network(clock: FakeClock) -> MemoryNetwork:
    return MemoryNetwork(clock)


@pytest.fixture
async def start_stores(clock: FakeClock, network: MemoryNetwork) -> AsyncIterator[StartStores]:
    """Starts one :class:`KVStore` per address on ``network`` and ``clock``; ends them all
    after the test (``abort()``, or ``stop()`` for the calls that asked ``graceful=True``).

    ``start_stores(peers, *, config, ready=True, ready_within=None, graceful=False,
    members=None, **kwargs)``: ``kwargs`` go to every ``KVStore`` (``replication=3``...);
    ``members`` is the member list of their discovery when it is not ``peers`` (some members
    never started). With ``ready``
    (the default) it returns once every store is ready (it pulled its partitions; within
    ``ready_within`` seconds when given) and the traffic settled; without, as soon as each
    has started.
    """
    started: list[tuple[KVStore, bool]] = []

    async def start(
        peers: Sequence[str],
        *,
        config: PeerRingConfig,
        ready: bool = True,
        ready_within: float | None = None,
        graceful: bool = False,
        members: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> list[KVStore]:
        stores = [
            KVStore(
                FixedDiscovery(address, list(peers if members is None else members)),
                config=config,
                transport=network.transport(address),
                clock=clock,
                **kwargs,
            )
            for address in peers
        ]
        for store in stores:
            started.append((store, graceful))
            await store.start()
        if ready:
            await asyncio.gather(*(s.wait_ready(ready_within) for s in stores))
            await settle_loop()
        return stores

    yield start
    for store, graceful in started:
        if graceful:
            await store.stop()
        else:
            await store.abort()


@pytest.fixture
async def serve_http() -> AsyncIterator[ServeHttp]:
    """Serves ``KVHttpApi`` objects on free loopback ports (see the module docstring)."""
    # Imported here: the HTTP API needs the [serve] extra, most of these tests do not.
    import aiohttp

    from peer_ring.kv._server import KVHttpServer

    running: list[tuple[Any, aiohttp.ClientSession]] = []

    async def serve(api: Any) -> tuple[str, aiohttp.ClientSession]:
        server = KVHttpServer(api, "127.0.0.1", 0)
        await server.start()
        session = aiohttp.ClientSession()
        running.append((server, session))
        return server.url, session

    yield serve
    for server, session in reversed(running):
        await session.close()
        await server.stop()
