"""Active expiry: freeing expired values that nobody reads (in the manner of Redis).

Lazy expiry (a read finds the value expired) alone would keep never-read keys in memory
forever. Like Redis, the engine samples keys that have a TTL and frees those that expired,
repeating while more than a quarter of a sample was expired, with a bound on the work done
per call: memory of expired keys is reclaimed at a rate that follows how many there are,
without ever scanning the whole keyspace. :class:`TTLIndex` is the structure that makes
uniform sampling O(1); :func:`run_active_expiry` is the loop a store runs in the background.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

from peer_ring.core import Clock

if TYPE_CHECKING:
    from peer_ring.kv._engine import KVEngine

logger = logging.getLogger(__name__)

#: Keys examined per round of :meth:`KVEngine.expire_step` (Redis: 20).
DEFAULT_SAMPLE = 20
#: Another round runs only while more than this share of the last sample had expired.
REPEAT_THRESHOLD = 0.25
#: Upper bound on rounds per call, so one call never takes long.
MAX_ROUNDS = 16
#: Seconds between two steps of :func:`run_active_expiry` (Redis: 10 times a second).
DEFAULT_INTERVAL = 0.1


class TTLIndex:
    """The set of keys that carry a TTL, with O(1) add, discard and random sampling.

    A list gives uniform random access; a dict from key to list position makes removal a
    swap with the last element. Only keys with a TTL pay for it (about 50 bytes each).
    """

    __slots__ = ("_keys", "_pos")

    def __init__(self) -> None:
        self._keys: list[bytes] = []
        self._pos: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._pos

    def add(self, key: bytes) -> None:
        """Track ``key`` (no-op if already tracked)."""
        if key not in self._pos:
            self._pos[key] = len(self._keys)
            self._keys.append(key)

    def discard(self, key: bytes) -> None:
        """Stop tracking ``key`` (no-op if not tracked)."""
        index = self._pos.pop(key, None)
        if index is None:
            return
        last = self._keys.pop()
        if index < len(self._keys):
            self._keys[index] = last
            self._pos[last] = index

    def sample(self, rng: random.Random, count: int) -> list[bytes]:
        """Up to ``count`` tracked keys chosen uniformly (with replacement).

        When ``count`` covers the whole index every key is returned once, so a small
        index is always fully checked.
        """
        keys = self._keys
        size = len(keys)
        if size <= count:
            return list(keys)
        randrange = rng.randrange
        return [keys[randrange(size)] for _ in range(count)]

    def clear(self) -> None:
        """Forget every key."""
        self._keys.clear()
        self._pos.clear()


async def run_active_expiry(
    engine: KVEngine,
    clock: Clock,
    interval: float = DEFAULT_INTERVAL,
    *,
    sample: int = DEFAULT_SAMPLE,
) -> None:
    """Run :meth:`KVEngine.expire_step` every ``interval`` seconds of ``clock``, forever.

    Start it as a task and cancel the task to stop it. An unexpected error in a step is
    logged and the loop goes on: a dead expiry task would silently let memory grow.

    Args:
        engine: the store to expire.
        clock: whose ``sleep`` paces the loop (a fake clock in tests).
        interval: seconds between steps.
        sample: keys examined per round (see :meth:`KVEngine.expire_step`).
    """
    if interval <= 0:
        raise ValueError(f"interval must be > 0, got {interval}")
    while True:
        try:
            engine.expire_step(sample)
        except Exception:
            logger.exception("active expiry step failed; retrying in %.3f s", interval)
        await clock.sleep(interval)
