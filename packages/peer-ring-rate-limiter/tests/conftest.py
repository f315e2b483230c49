"""Fixtures: rate limiter clusters on the in-memory network (fake clock)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from peer_ring.core import PeerRingConfig
from peer_ring.core.testing import FakeClock, FixedDiscovery, MemoryNetwork, settle_loop
from peer_ring.ratelimit import RateLimiter

CONFIG = PeerRingConfig(partitions=64, request_timeout=1.0)


def peers(n: int) -> list[str]:
    return [f"127.0.0.{i}:7201" for i in range(1, n + 1)]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def network(clock: FakeClock) -> MemoryNetwork:
    return MemoryNetwork(clock)


MakeLimiter = Callable[..., RateLimiter]


@pytest.fixture
def make_limiter(network: MemoryNetwork, clock: FakeClock) -> MakeLimiter:
    def make(address: str, members: list[str], **kw: object) -> RateLimiter:
        kw.setdefault("replication", 2)
        return RateLimiter(
            FixedDiscovery(address, members),
            config=kw.pop("config", CONFIG),  # type: ignore[arg-type]
            transport=network.transport(address),
            clock=clock,
            **kw,  # type: ignore[arg-type]
        )

    return make


@pytest.fixture
async def cluster(
    make_limiter: MakeLimiter, request: pytest.FixtureRequest
) -> AsyncIterator[list[RateLimiter]]:
    """Five started limiters (``@pytest.mark.parametrize("cluster", [kwargs], indirect=True)``
    passes limiter keyword arguments)."""
    kw = dict(getattr(request, "param", {}) or {})
    members = peers(kw.pop("nodes", 5))
    limiters = [make_limiter(a, members, **kw) for a in members]
    for rl in limiters:
        await rl.start()
    await asyncio.gather(*(rl.node.wait_ready() for rl in limiters))
    await settle_loop()
    yield limiters
    for rl in limiters:
        await rl.stop()


AsgiCall = Callable[..., "asyncio.Future[tuple[int, dict[str, str], bytes]]"]


@pytest.fixture
def asgi_get() -> Callable[..., object]:
    """``await asgi_get(app, path, client=("10.0.0.1", 1234), headers={})`` -> (status,
    headers, body): one HTTP GET through an ASGI app, no server and no HTTP client needed."""

    async def call(
        app: Callable[..., object],
        path: str,
        client: tuple[str, int] = ("10.0.0.1", 1234),
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
            + [(b"host", b"test")],
            "client": client,
            "server": ("test", 80),
        }
        sent: list[dict[str, object]] = []
        done = False

        async def receive() -> dict[str, object]:
            nonlocal done
            if done:
                await asyncio.Event().wait()
            done = True
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, object]) -> None:
            sent.append(message)

        await app(scope, receive, send)  # type: ignore[misc]
        start = next(m for m in sent if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")  # type: ignore[misc]
        hdrs = {k.decode().lower(): v.decode() for k, v in start["headers"]}  # type: ignore[attr-defined]
        return int(start["status"]), hdrs, body  # type: ignore[call-overload]

    return call
