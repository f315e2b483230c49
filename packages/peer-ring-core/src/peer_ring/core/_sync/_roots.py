"""Partition roots without holding the event loop (issue 23).

Every anti-entropy round, pull round and ``digests`` answer computes the root
(:func:`~peer_ring.core._sync._digests.partition_root`) of up to a few thousand partitions.
Computed in one pass, that held a node's event loop for 10-25 ms at a time (256 partitions
with a record or two each, load 8), and every request arriving meanwhile waited for it:
the stall lands in every application's p99. Two things remove it:

* :class:`RootCache` keeps each partition's last root *with the digests it was computed
  from*, and reuses it only when the digests the application returns now are equal (a
  C-level tuple comparison, about 30 times cheaper than building and hashing the root's
  bytes). The application's ``digest_partition`` hook still decides the digests on every
  call; only the core's own hashing is skipped, so there is nothing to invalidate: a
  changed digest never matches. An empty partition's root is the constant 0 and is not
  kept.
* :data:`ROOTS_SLICE`: callers that compute many roots give the loop
  :data:`TURNS_BETWEEN_SLICES` turns (:func:`give_turns`) after each slice of that many
  partitions. The slice is a count, not a time budget, so that the simulator's schedules
  stay deterministic.

Why several turns and not one: a request that arrives while a round runs needs a few loop
turns of its own before its answer leaves (over TCP: the frame is read, the read loop
dispatches it and queues the answer, the writer wakes, lingers one turn, writes; the
requesting side has as many). With one turn between slices, every one of those turns
waited behind a slice: a request that met a round took several slices longer (issue 23,
round 6: the open-loop tails, see docs/benchmarks.md). With a few turns, its whole chain
usually runs between two slices, and an idle loop pays a few empty turns (microseconds)
per slice.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TypeVar

from peer_ring.core._sync._digests import NamespaceDigests, partition_root

_T = TypeVar("_T")

#: Partitions whose digests and root are computed in one turn of the event loop.
#: 64 partitions took 1-2.5 ms of CPU at load 9 (KV store digest hook + root, a few records
#: each, half of it the hook): 32 keeps a turn near 1 ms.
ROOTS_SLICE = 32

#: Entries of a ``digests`` answer decoded in one turn (1,024 took 1.6-1.8 ms at load 9).
DECODE_SLICE = 256

#: Loop turns given to the rest of the node between two slices (see the module docstring):
#: the turns a request served over TCP needs on one side (read, dispatch and answer,
#: writer wake-up, linger), so that it runs between two slices instead of one turn per
#: slice. A node still making its initial pull gives one turn (``SyncContext.slice_turns``):
#: until it is ready it refuses the requests of the partitions it pulls anyway.
TURNS_BETWEEN_SLICES = 8


async def give_turns(turns: int | None = None) -> None:
    """Give the event loop ``turns`` turns (default :data:`TURNS_BETWEEN_SLICES`)."""
    for _ in range(TURNS_BETWEEN_SLICES if turns is None else turns):
        await asyncio.sleep(0)


async def in_slices(
    items: Iterable[_T],
    size: int = ROOTS_SLICE,
    pause: Callable[[], Awaitable[None]] = give_turns,
) -> AsyncIterator[_T]:
    """``items``, awaiting ``pause`` (a few loop turns, :func:`give_turns`) after every
    ``size`` of them (a loop over partitions that calls the application's hooks for each:
    digests, drops)."""
    for i, item in enumerate(items):
        if i and not i % size:
            await pause()
        yield item


_Key = tuple[tuple[str, tuple[bytes, ...]], ...]


class RootCache:
    """Partition roots, reused while a partition's digests are unchanged.

    Memory: at most one entry per non-empty partition, holding a tuple of its digests
    (e.g. 64 buckets x 12-byte digests: about 3.6 KB per partition and namespace).
    """

    def __init__(self) -> None:
        self._entries: dict[int, tuple[_Key, int]] = {}
        #: Roots reused from the cache, and roots computed (for tests and status).
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def root(self, partition: int, digests: NamespaceDigests) -> int:
        """The root of ``digests``, ``partition``'s digests as the hooks returned them now."""
        if not any(map(any, digests.values())):
            # Every bucket empty: the constant root, nothing worth keeping.
            self._entries.pop(partition, None)
            return 0
        # A snapshot of the digests: a hook may hand back a list it changes later.
        key = tuple((ns, tuple(digests[ns])) for ns in sorted(digests))
        entry = self._entries.get(partition)
        if entry is not None and entry[0] == key:
            self.hits += 1
            return entry[1]
        self.misses += 1
        root = partition_root(digests)
        self._entries[partition] = (key, root)
        return root

    def forget(self, partition: int) -> None:
        """Drop ``partition``'s entry (its data was dropped here)."""
        self._entries.pop(partition, None)
