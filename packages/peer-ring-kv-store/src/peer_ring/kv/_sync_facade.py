"""``SyncKVStore``: a :class:`KVStore` for scripts and sync frameworks (Flask, Django...).

The node runs on its own event loop in a daemon thread; every call is submitted to that
loop (``asyncio.run_coroutine_threadsafe``) and the calling thread blocks on the result, so
calls are safe from any number of threads. The node keeps answering its peers between
calls, as an embedded async store does.

Costs, plainly: each call crosses threads (tens of microseconds on top of the operation),
and the node's work competes with the application's threads for the GIL. Do not call it
from inside the node's own loop (a callback of the store): that would wait on itself, and
it raises ``RuntimeError`` instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar

from peer_ring.core import Discovery
from peer_ring.kv._store import KVStore
from peer_ring.kv._versions import Version

T = TypeVar("T")


class SyncKVStore:
    """A blocking facade over a :class:`KVStore` running on its own loop thread.

    Args:
        discovery: as for :class:`KVStore`.
        ready_timeout: seconds to wait for the initial sync when starting (``None``: do not
            wait).
        **kwargs: every other :class:`KVStore` argument (replication, quorum, config...).

    Example:
        >>> with SyncKVStore(StaticDiscovery(peers, self_address=me)) as kv:  # doctest: +SKIP
        ...     kv.set("user:1", "alice", ttl=30)
        ...     assert kv.get("user:1") == "alice"
    """

    def __init__(
        self, discovery: Discovery, *, ready_timeout: float | None = 60.0, **kwargs: Any
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="peer-ring-kv-loop", daemon=True
        )
        self._thread.start()
        self._closed = False
        try:
            self._store: KVStore = self._call(self._create(discovery, kwargs))
            self._call(self._store.start())
            if ready_timeout is not None:
                self._call(self._store.wait_ready(ready_timeout))
        except BaseException:
            self.close(graceful=False)
            raise

    @staticmethod
    async def _create(discovery: Discovery, kwargs: dict[str, Any]) -> KVStore:
        # Built on the loop thread: the node creates its asyncio objects there.
        return KVStore(discovery, **kwargs)

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if self._loop.is_closed():
            coro.close()
            raise RuntimeError("SyncKVStore is closed")
        if threading.get_ident() == self._thread.ident:
            coro.close()
            raise RuntimeError("SyncKVStore called from its own loop thread (use the KVStore)")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    @property
    def store(self) -> KVStore:
        """The async store (use it only from its loop, e.g. via :meth:`run`)."""
        return self._store

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run any coroutine of the store on its loop and return its result."""
        return self._call(coro, timeout)

    def get(self, key: str | bytes, default: Any = None, **kw: Any) -> Any:
        """See :meth:`KVStore.get`."""
        return self._call(self._store.get(key, default, **kw))

    def set(self, key: str | bytes, value: object, **kw: Any) -> None:
        """See :meth:`KVStore.set`."""
        self._call(self._store.set(key, value, **kw))

    def delete(self, key: str | bytes, **kw: Any) -> None:
        """See :meth:`KVStore.delete`."""
        self._call(self._store.delete(key, **kw))

    def mget(self, keys: Iterable[Any], **kw: Any) -> dict[Any, Any]:
        """See :meth:`KVStore.mget`."""
        return self._call(self._store.mget(list(keys), **kw))

    def mset(self, mapping: Mapping[Any, object], **kw: Any) -> None:
        """See :meth:`KVStore.mset`."""
        self._call(self._store.mset(dict(mapping), **kw))

    def mdelete(self, keys: Iterable[str | bytes], **kw: Any) -> None:
        """See :meth:`KVStore.mdelete`."""
        self._call(self._store.mdelete(list(keys), **kw))

    def exists(self, key: str | bytes, **kw: Any) -> bool:
        """See :meth:`KVStore.exists`."""
        return self._call(self._store.exists(key, **kw))

    def ttl(self, key: str | bytes, **kw: Any) -> float | None:
        """See :meth:`KVStore.ttl`."""
        return self._call(self._store.ttl(key, **kw))

    def expire(self, key: str | bytes, ttl: float | None, **kw: Any) -> bool:
        """See :meth:`KVStore.expire`."""
        return self._call(self._store.expire(key, ttl, **kw))

    touch = expire

    def set_if_absent(self, key: str | bytes, value: object, **kw: Any) -> bool:
        """See :meth:`KVStore.set_if_absent`."""
        return self._call(self._store.set_if_absent(key, value, **kw))

    def get_versioned(self, key: str | bytes, **kw: Any) -> tuple[Any, Version] | None:
        """See :meth:`KVStore.get_versioned`."""
        return self._call(self._store.get_versioned(key, **kw))

    def compare_and_set(
        self, key: str | bytes, value: object, *, version: Version | None, **kw: Any
    ) -> bool:
        """See :meth:`KVStore.compare_and_set`."""
        return self._call(self._store.compare_and_set(key, value, version=version, **kw))

    def incr(self, key: str | bytes, delta: int = 1, **kw: Any) -> int:
        """See :meth:`KVStore.incr`."""
        return self._call(self._store.incr(key, delta, **kw))

    def decr(self, key: str | bytes, delta: int = 1, **kw: Any) -> int:
        """See :meth:`KVStore.decr`."""
        return self._call(self._store.decr(key, delta, **kw))

    def scan_page(
        self, prefix: bytes = b"", cursor: str | None = None, count: int = 100
    ) -> tuple[list[bytes], str | None]:
        """See :meth:`KVStore.scan_page`."""
        return self._call(self._store.scan_page(prefix, cursor, count))

    def cluster_status(self) -> dict[str, Any]:
        """See :meth:`KVStore.cluster_status`."""
        return self._call(_value(self._store.cluster_status))

    def stats(self) -> dict[str, int | float]:
        """See :meth:`KVStore.stats`."""
        return self._call(_value(self._store.stats))

    def close(self, *, graceful: bool = True, deadline: float | None = None) -> None:
        """Stop the node (gracefully by default, see :meth:`KVStore.stop`) and its thread.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            store = getattr(self, "_store", None)
            if store is not None:
                self._call(store.stop(graceful=graceful, deadline=deadline))
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> SyncKVStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(graceful=exc is None or isinstance(exc, Exception))


async def _value(produce: Any) -> Any:
    # Read the store's state on its own loop thread, never concurrently with it.
    return produce()
