"""Storage backends for the `limits` library (and so slowapi and flask-limiter).

Importing this module registers two URI schemes with ``limits`` (its storages register by
subclassing ``limits.storage.Storage`` with a ``STORAGE_SCHEME``):

- ``peerring://HOST:PORT?peers=H1:P1,H2:P2&replication=2`` — :class:`PeerRingStorage`, for
  the synchronous strategies. It runs its own :class:`RateLimiter` node (this process's
  ``HOST:PORT``; static discovery over ``peers``) on a private event loop in a background
  thread, so it also works from inside an async web framework's loop.
- ``async+peerring://...`` — :class:`AsyncPeerRingStorage`, for ``limits.aio`` strategies:
  the node runs on the caller's event loop (started on first use), or pass an existing,
  started limiter with ``storage_from_string("async+peerring://", limiter=rl)``.

Strategies: fixed window (``incr``: an exact owner-decided counter) and moving window
(``acquire_entry``: the sliding window log, exact, limit at most 10,000). The sliding window
counter strategy is not supported. ``reset()`` clears only the keys this storage used.

Needs the ``limits`` extra: ``pip install peer-ring-rate-limiter[limits]``.
"""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.parse
from collections.abc import Coroutine
from typing import Any, TypeVar

from limits.aio.storage import MovingWindowSupport as AsyncMovingWindowSupport
from limits.aio.storage import Storage as AsyncStorage
from limits.storage import MovingWindowSupport, Storage

from peer_ring.core import PeerRingError
from peer_ring.ratelimit._errors import RateLimitError
from peer_ring.ratelimit._limit import MAX_LIMIT, Algorithm, Limit
from peer_ring.ratelimit._limiter import RateLimiter

T = TypeVar("T")

#: Period assumed by ``get``/``get_expiry`` for a key this storage never incremented (the
#: count is still right: the owner forgets expired windows; only the expiry is a guess).
UNKNOWN_PERIOD = 86400


def limiter_from_uri(uri: str, **options: Any) -> RateLimiter:
    """A (not started) :class:`RateLimiter` for ``peerring://HOST:PORT?peers=...``."""
    from peer_ring.discovery.static import StaticDiscovery

    parsed = urllib.parse.urlsplit(uri)
    query = urllib.parse.parse_qs(parsed.query)
    me = parsed.netloc
    if not me:
        raise RateLimitError(
            f"{uri!r}: give this node's HOST:PORT (peerring://HOST:PORT?peers=...)"
        )
    peers = [p for v in query.get("peers", []) for p in v.split(",") if p] or [me]
    replication = int(query.get("replication", ["2"])[0])
    return RateLimiter(
        discovery=StaticDiscovery(peers, self_address=me),
        replication=min(replication, len(set(peers) | {me})),
        **options,
    )


class _Ops:
    """The storage operations on a started limiter (shared by both storages)."""

    def __init__(self) -> None:
        self.periods: dict[str, int] = {}

    def counter(self, key: str, expiry: int | None = None) -> Limit:
        period = expiry if expiry is not None else self.periods.get(key, UNKNOWN_PERIOD)
        return Limit(MAX_LIMIT, max(1, period), algorithm=Algorithm.FIXED_WINDOW)

    async def incr(self, rl: RateLimiter, key: str, expiry: int, amount: int) -> int:
        self.periods[key] = expiry
        d = await rl.hit(key, self.counter(key, expiry), amount)
        return MAX_LIMIT - d.remaining

    async def get(self, rl: RateLimiter, key: str) -> int:
        d = await rl.peek(key, self.counter(key))
        return MAX_LIMIT - d.remaining

    async def get_expiry(self, rl: RateLimiter, key: str) -> float:
        d = await rl.peek(key, self.counter(key))
        return time.time() + d.reset_after

    async def acquire_entry(
        self, rl: RateLimiter, key: str, limit: int, expiry: int, amount: int
    ) -> bool:
        self.periods[key] = expiry
        window = Limit(limit, expiry, algorithm=Algorithm.SLIDING_WINDOW_LOG)
        return (await rl.hit(key, window, amount)).allowed

    async def get_moving_window(
        self, rl: RateLimiter, key: str, limit: int, expiry: int
    ) -> tuple[float, int]:
        window = Limit(limit, expiry, algorithm=Algorithm.SLIDING_WINDOW_LOG)
        d = await rl.peek(key, window)
        # limits reports the window's start; its reset is start + expiry. When full, that is
        # when the next hit fits; otherwise the newest entry's (a later, safe estimate).
        until = d.retry_after if d.remaining == 0 else d.reset_after
        return time.time() + until - expiry, limit - d.remaining

    async def clear(self, rl: RateLimiter, key: str) -> None:
        await rl.reset(key)
        self.periods.pop(key, None)

    async def reset(self, rl: RateLimiter) -> int:
        keys = list(self.periods)
        for key in keys:
            await self.clear(rl, key)
        return len(keys)


class _LoopThread:
    """A private event loop in a daemon thread; ``run`` a coroutine on it from any thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()


class PeerRingStorage(Storage, MovingWindowSupport):
    """Synchronous ``limits`` storage: ``peerring://HOST:PORT?peers=...&replication=2``.

    Options (``storage_from_string(uri, **options)`` / slowapi ``storage_options``) are
    passed to :class:`RateLimiter` (``fail_policy``, ``timeout``...); ``ready_timeout``
    (seconds, default 30) bounds the wait for the node to join the ring.
    """

    # Read by limits' StorageRegistry metaclass, which registers the scheme on subclassing.
    STORAGE_SCHEME = ["peerring"]  # noqa: RUF012 - the type limits declares

    def __init__(self, uri: str, wrap_exceptions: bool = False, **options: Any) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions)
        ready_timeout = float(options.pop("ready_timeout", 30.0))
        self._runner = _LoopThread(f"peerring-limits-{uri}")
        self._ops = _Ops()

        async def boot() -> RateLimiter:
            rl = limiter_from_uri(uri, **options)
            await rl.start()
            await rl.node.wait_ready(ready_timeout)
            return rl

        self.limiter = self._runner.run(boot())

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return (RateLimitError, PeerRingError)

    def close(self) -> None:
        """Stop the node and its thread."""
        self._runner.run(self.limiter.stop(), 30)
        self._runner.close()

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return self._runner.run(self._ops.incr(self.limiter, key, expiry, amount))

    def get(self, key: str) -> int:
        return self._runner.run(self._ops.get(self.limiter, key))

    def get_expiry(self, key: str) -> float:
        return self._runner.run(self._ops.get_expiry(self.limiter, key))

    def check(self) -> bool:
        return self.limiter.node.running and self.limiter.node.ready

    def reset(self) -> int | None:
        return self._runner.run(self._ops.reset(self.limiter))

    def clear(self, key: str) -> None:
        self._runner.run(self._ops.clear(self.limiter, key))

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        return self._runner.run(self._ops.acquire_entry(self.limiter, key, limit, expiry, amount))

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        return self._runner.run(self._ops.get_moving_window(self.limiter, key, limit, expiry))


class AsyncPeerRingStorage(AsyncStorage, AsyncMovingWindowSupport):
    """``limits.aio`` storage: ``async+peerring://HOST:PORT?peers=...``, or
    ``async+peerring://`` with ``limiter=`` a started :class:`RateLimiter` of this loop."""

    STORAGE_SCHEME = ["async+peerring"]  # noqa: RUF012 - the type limits declares

    def __init__(self, uri: str, wrap_exceptions: bool = False, **options: Any) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions)
        given = options.pop("limiter", None)
        if given is not None and not isinstance(given, RateLimiter):
            raise RateLimitError("limiter= must be a peer_ring.ratelimit.RateLimiter")
        self._given: RateLimiter | None = given
        self._uri = uri.removeprefix("async+")
        self._options = options
        self._limiter: RateLimiter | None = given
        self._starting: asyncio.Lock | None = None
        self._ops = _Ops()

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return (RateLimitError, PeerRingError)

    async def limiter(self) -> RateLimiter:
        """The limiter (started on first use when this storage created it)."""
        if self._limiter is not None:
            return self._limiter
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._limiter is None:
                ready_timeout = float(self._options.pop("ready_timeout", 30.0))
                rl = limiter_from_uri(self._uri, **self._options)
                await rl.start()
                await rl.node.wait_ready(ready_timeout)
                self._limiter = rl
        return self._limiter

    async def close(self) -> None:
        """Stop the node if this storage started it."""
        if self._limiter is not None and self._given is None:
            await self._limiter.stop()
            self._limiter = None

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return await self._ops.incr(await self.limiter(), key, expiry, amount)

    async def get(self, key: str) -> int:
        return await self._ops.get(await self.limiter(), key)

    async def get_expiry(self, key: str) -> float:
        return await self._ops.get_expiry(await self.limiter(), key)

    async def check(self) -> bool:
        rl = await self.limiter()
        return rl.node.running and rl.node.ready

    async def reset(self) -> int | None:
        return await self._ops.reset(await self.limiter())

    async def clear(self, key: str) -> None:
        await self._ops.clear(await self.limiter(), key)

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        return await self._ops.acquire_entry(await self.limiter(), key, limit, expiry, amount)

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        return await self._ops.get_moving_window(await self.limiter(), key, limit, expiry)
