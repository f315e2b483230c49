"""The FastAPI dependency, and slowapi running unchanged on the ``peerring://`` storage."""

from __future__ import annotations

from collections.abc import Callable

import pytest

fastapi = pytest.importorskip("fastapi", reason="the fastapi extra is not installed")

from fastapi import Request, Response  # noqa: E402

from peer_ring.core.testing import free_port  # noqa: E402
from peer_ring.ratelimit import Limit, RateLimiter  # noqa: E402
from peer_ring.ratelimit.fastapi import RateLimit  # noqa: E402

LIMIT = Limit(3, 60.0, algorithm="fixed_window")


async def test_fastapi_dependency(
    cluster: list[RateLimiter], asgi_get: Callable[..., object]
) -> None:
    app = fastapi.FastAPI()
    per_ip = RateLimit(lambda: cluster[1], LIMIT)

    @app.get("/items", dependencies=[fastapi.Depends(per_ip)])
    async def items() -> list[str]:
        return ["a"]

    out = [await asgi_get(app, "/items") for _ in range(4)]  # type: ignore[misc]
    assert [o[0] for o in out] == [200, 200, 200, 429]
    assert out[0][2] == b'["a"]' and out[2][1]["ratelimit-remaining"] == "0"
    assert int(out[3][1]["retry-after"]) > 0 and out[3][1]["x-ratelimit-limit"] == "3"


async def test_slowapi_works_unchanged_on_peerring_storage(
    asgi_get: Callable[..., object],
) -> None:
    pytest.importorskip("slowapi", reason="slowapi is not installed")
    from slowapi import Limiter, _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded
    from slowapi.util import get_remote_address

    import peer_ring.ratelimit.limits_storage  # noqa: F401  (registers peerring://)

    port = free_port("127.0.0.1")
    limiter = Limiter(
        key_func=get_remote_address,
        storage_uri=f"peerring://127.0.0.1:{port}?peers=127.0.0.1:{port}",
        headers_enabled=True,
    )
    app = fastapi.FastAPI()
    app.state.limiter = limiter
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]

    @app.get("/slow")
    @limiter.limit("2/minute")
    async def slow(request: Request, response: Response) -> str:
        return "ok"

    try:
        out = [await asgi_get(app, "/slow") for _ in range(3)]  # type: ignore[misc]
        assert [o[0] for o in out] == [200, 200, 429]
        assert out[1][1]["x-ratelimit-remaining"] == "0" and "retry-after" in out[2][1]
    finally:
        limiter._storage.close()  # type: ignore[attr-defined]
