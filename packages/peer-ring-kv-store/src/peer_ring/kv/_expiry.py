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
from collections.abc import Callable, Iterable
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
    """The keys that may carry a TTL: a plain list, sampled uniformly at random.

    Memory is the point: 8 bytes per key (the list slot; the key object is the store's).
    An exact set with O(1) removal needs a position dict, about 75 bytes more per key.
    So removal is lazy: when a key loses its TTL (rewritten, deleted, expired, dropped)
    its entry stays and becomes *stale*; whoever samples a stale entry removes it
    (:meth:`remove`), and :meth:`compact` rebuilds the list once stale entries could
    outnumber live ones. A key rewritten with a TTL may appear twice until then; callers
    check the record behind every sampled entry anyway.
    """

    __slots__ = ("_keys",)

    def __init__(self) -> None:
        self._keys: list[bytes] = []

    def __len__(self) -> int:
        """Entries, stale ones included."""
        return len(self._keys)

    def add(self, key: bytes) -> None:
        """Track ``key``."""
        self._keys.append(key)

    def sample(self, rng: random.Random, count: int) -> list[tuple[int, bytes]]:
        """Up to ``count`` distinct entries ``(position, key)`` chosen uniformly.

        When ``count`` covers the whole index every entry is returned, so a small index
        is always fully checked.
        """
        keys = self._keys
        size = len(keys)
        if size <= count:
            return list(enumerate(keys))
        randrange = rng.randrange
        positions = {randrange(size) for _ in range(count)}
        return [(position, keys[position]) for position in positions]

    def remove(self, positions: Iterable[int]) -> None:
        """Remove the entries at ``positions`` (as returned by the same :meth:`sample`)."""
        keys = self._keys
        # Highest first: swapping the last entry into a removed slot never moves an entry
        # that is still to be removed.
        for position in sorted(set(positions), reverse=True):
            last = keys.pop()
            if position < len(keys):
                keys[position] = last

    def compact(self, keep: Callable[[bytes], bool]) -> None:
        """Keep one entry per key for which ``keep(key)`` is true; drop the rest."""
        seen: set[bytes] = set()
        kept = []
        for key in self._keys:
            if key not in seen and keep(key):
                seen.add(key)
                kept.append(key)
        self._keys = kept

    def clear(self) -> None:
        """Forget every entry."""
        self._keys = []


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
