"""Named maps: several independent key spaces in one store (``kv.map("sessions")``).

A map is a view: its keys are stored as ``<name> NUL <key>`` in the store's one key space, so
two maps never see each other's keys, and a map costs nothing to create. The name may not
contain NUL; a key of the plain store that starts with ``<name> NUL`` is seen by the map
(avoid NUL in plain keys and the two never meet).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from peer_ring.core import InvalidArgumentError
from peer_ring.kv._versions import Version

if TYPE_CHECKING:
    from peer_ring.kv._store import KVStore

K = TypeVar("K", str, bytes)

#: Longest map name, in UTF-8 bytes.
MAX_MAP_NAME_BYTES = 255


class KVMap:
    """A named key space of a :class:`KVStore` (``kv.map(name)``).

    It offers the store's calls with the same arguments and semantics; every key is
    prefixed with the map's name, so keys of different maps never collide.
    """

    __slots__ = ("_name", "_prefix_b", "_prefix_s", "_store")

    def __init__(self, store: KVStore, name: str) -> None:
        if not isinstance(name, str) or not name or "\x00" in name:
            raise InvalidArgumentError(f"a map name is a non-empty str without NUL, got {name!r}")
        if len(name.encode()) > MAX_MAP_NAME_BYTES:
            raise InvalidArgumentError(f"map names are at most {MAX_MAP_NAME_BYTES} bytes")
        self._store = store
        self._name = name
        self._prefix_s = name + "\x00"
        self._prefix_b = self._prefix_s.encode()

    @property
    def name(self) -> str:
        """The map's name."""
        return self._name

    def _k(self, key: Any) -> Any:
        if isinstance(key, str):
            if not key:
                return key  # the store refuses empty keys with its usual error
            return self._prefix_s + key
        if isinstance(key, bytes):
            if not key:
                return key
            return self._prefix_b + key
        return key  # the store raises InvalidKeyError

    async def get(self, key: str | bytes, default: Any = None, **kw: Any) -> Any:
        """See :meth:`KVStore.get`."""
        return await self._store.get(self._k(key), default, **kw)

    async def set(self, key: str | bytes, value: object, **kw: Any) -> None:
        """See :meth:`KVStore.set`."""
        await self._store.set(self._k(key), value, **kw)

    async def delete(self, key: str | bytes, **kw: Any) -> None:
        """See :meth:`KVStore.delete`."""
        await self._store.delete(self._k(key), **kw)

    async def mget(self, keys: Iterable[K], **kw: Any) -> dict[K, Any]:
        """See :meth:`KVStore.mget`."""
        originals = {self._k(k): k for k in keys}
        found = await self._store.mget(list(originals), **kw)
        return {originals[k]: v for k, v in found.items()}

    async def mset(self, mapping: Mapping[K, object], **kw: Any) -> None:
        """See :meth:`KVStore.mset`."""
        await self._store.mset({self._k(k): v for k, v in mapping.items()}, **kw)

    async def mdelete(self, keys: Iterable[str | bytes], **kw: Any) -> None:
        """See :meth:`KVStore.mdelete`."""
        await self._store.mdelete([self._k(k) for k in keys], **kw)

    async def exists(self, key: str | bytes, **kw: Any) -> bool:
        """See :meth:`KVStore.exists`."""
        return await self._store.exists(self._k(key), **kw)

    async def ttl(self, key: str | bytes, **kw: Any) -> float | None:
        """See :meth:`KVStore.ttl`."""
        return await self._store.ttl(self._k(key), **kw)

    async def expire(self, key: str | bytes, ttl: float | None, **kw: Any) -> bool:
        """See :meth:`KVStore.expire`."""
        return await self._store.expire(self._k(key), ttl, **kw)

    touch = expire

    async def set_if_absent(self, key: str | bytes, value: object, **kw: Any) -> bool:
        """See :meth:`KVStore.set_if_absent`."""
        return await self._store.set_if_absent(self._k(key), value, **kw)

    async def get_versioned(self, key: str | bytes, **kw: Any) -> tuple[Any, Version] | None:
        """See :meth:`KVStore.get_versioned`."""
        return await self._store.get_versioned(self._k(key), **kw)

    async def compare_and_set(
        self, key: str | bytes, value: object, *, version: Version | None, **kw: Any
    ) -> bool:
        """See :meth:`KVStore.compare_and_set`."""
        return await self._store.compare_and_set(self._k(key), value, version=version, **kw)

    async def incr(self, key: str | bytes, delta: int = 1, **kw: Any) -> int:
        """See :meth:`KVStore.incr`."""
        return await self._store.incr(self._k(key), delta, **kw)

    async def decr(self, key: str | bytes, delta: int = 1, **kw: Any) -> int:
        """See :meth:`KVStore.decr`."""
        return await self._store.decr(self._k(key), delta, **kw)

    async def scan(self, prefix: str = "", *, count: int = 100) -> AsyncIterator[str]:
        """The map's live keys starting with ``prefix`` (see :meth:`KVStore.scan`)."""
        skip = len(self._prefix_s)
        async for key in self._store.scan(self._prefix_s + prefix, count=count):
            yield key[skip:]
