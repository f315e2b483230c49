"""A FastAPI dependency that rate-limits an endpoint and sets the rate-limit headers.

Needs the ``fastapi`` extra: ``pip install peer-ring-rate-limiter[fastapi]``::

    from fastapi import Depends, FastAPI
    from peer_ring.ratelimit.fastapi import RateLimit

    app = FastAPI()
    per_ip = RateLimit(lambda: limiter, Limit.per_minute(60))

    @app.get("/items", dependencies=[Depends(per_ip)])
    async def items() -> list[str]: ...

A denied request raises ``HTTPException(429)`` carrying the headers (``Retry-After``
included); an admitted one gets the headers on its response.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import HTTPException, Request, Response

from peer_ring.ratelimit._decision import Decision
from peer_ring.ratelimit._limit import Limit
from peer_ring.ratelimit._limiter import RateLimiter
from peer_ring.ratelimit._policy import Mode
from peer_ring.ratelimit.asgi import rate_limit_headers


def request_ip(request: Request) -> str | None:
    """The default key: the client's IP address."""
    return None if request.client is None else f"ip:{request.client.host}"


class RateLimit:
    """A dependency: ``Depends(RateLimit(get_limiter, limit, key=...))``.

    Args:
        limiter: the :class:`RateLimiter`, or a callable returning it (so the limiter can be
            created in the app's lifespan, after the dependency is declared).
        limit: the limit applied per key.
        key: ``key(request) -> str | None`` (default: client IP); None: not limited.
        cost: hits per request.
        mode: the limiter's mode for these hits (default: the limiter's).
    """

    def __init__(
        self,
        limiter: RateLimiter | Callable[[], RateLimiter],
        limit: Limit,
        *,
        key: Callable[[Request], str | None] = request_ip,
        cost: int = 1,
        mode: Mode | str | None = None,
    ) -> None:
        self._limiter = limiter
        self.limit = limit
        self.key = key
        self.cost = cost
        self.mode = mode

    async def __call__(self, request: Request, response: Response) -> Decision | None:
        k = self.key(request)
        if k is None:
            return None
        rl = self._limiter if isinstance(self._limiter, RateLimiter) else self._limiter()
        d = await rl.hit(k, self.limit, self.cost, mode=self.mode)
        headers = rate_limit_headers(d, self.limit)
        if not d.allowed:
            raise HTTPException(status_code=429, detail="rate limit exceeded", headers=headers)
        response.headers.update(headers)
        return d
