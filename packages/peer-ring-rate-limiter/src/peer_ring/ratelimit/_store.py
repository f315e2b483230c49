"""The keys' states on one node, grouped by partition, and the core's data-movement hooks.

A node holds an entry for every key it replicates (the owner's decisions arrive with
``seq`` numbers; the higher one wins). Merging is idempotent and commutative, so the same
record may arrive through replication, hinted handoff, a partition pull or anti-entropy, in
any order.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence

from peer_ring.core import DIGEST_BUCKETS, bucket_for_key
from peer_ring.ratelimit._errors import CorruptStateError
from peer_ring.ratelimit._wire import Entry, decode_entry, encode_entry

logger = logging.getLogger(__name__)


class StateStore:
    """Entries by partition and key, with times on this node's clock.

    Args:
        clock: returns this node's monotonic time (seconds).
        partition_of: the partition of a key in this node's ring.
        retain: seconds an expired entry is kept (with its seq) before it is forgotten, so
            a late, older record cannot replace a newer decision.
    """

    def __init__(
        self, clock: Callable[[], float], partition_of: Callable[[bytes], int], retain: float
    ) -> None:
        self._now = clock
        self._partition_of = partition_of
        self._retain = retain
        self._parts: dict[int, dict[bytes, Entry]] = {}
        self.handoffs_in = 0  # records merged from other nodes' data movement
        self.handoffs_out = 0  # records exported for data movement

    def __len__(self) -> int:
        return sum(len(p) for p in self._parts.values())

    def get(self, key: bytes, partition: int | None = None) -> Entry | None:
        """The entry of ``key`` (expired or not), or None."""
        p = self._partition_of(key) if partition is None else partition
        part = self._parts.get(p)
        return None if part is None else part.get(key)

    def put(self, key: bytes, entry: Entry, partition: int | None = None) -> None:
        """Store ``entry`` as the key's newest (the caller decided it)."""
        p = self._partition_of(key) if partition is None else partition
        self._parts.setdefault(p, {})[key] = entry

    def merge(self, key: bytes, entry: Entry, partition: int) -> bool:
        """Keep ``entry`` if it is newer than the stored one (or that one expired)."""
        part = self._parts.setdefault(partition, {})
        old = part.get(key)
        if old is None or entry.seq > old.seq or old.expires <= self._now():
            part[key] = entry
            return True
        return False

    def sweep(self) -> int:
        """Forget entries expired more than ``retain`` seconds ago; return how many."""
        cutoff = self._now() - self._retain
        dropped = 0
        for p in list(self._parts):
            part = self._parts[p]
            old = [k for k, e in part.items() if e.expires < cutoff]
            for k in old:
                del part[k]
            dropped += len(old)
            if not part:
                del self._parts[p]
        return dropped

    def keys(self) -> Iterator[bytes]:
        """Every key held (any partition)."""
        for part in self._parts.values():
            yield from part

    # -- DataHooks ---------------------------------------------------------------------

    def export_partition(
        self, partition: int, buckets: Collection[int] | None = None
    ) -> Iterable[bytes]:
        """Every entry of ``partition`` (only ``buckets`` when given), as records."""
        part = self._parts.get(partition, {})
        now = self._now()
        wanted = None if buckets is None else set(buckets)
        out = [
            encode_entry(k, e, now)
            for k, e in list(part.items())
            if wanted is None or bucket_for_key(k) in wanted
        ]
        self.handoffs_out += len(out)
        return out

    def apply_records(self, partition: int, records: Sequence[bytes]) -> None:
        """Merge records of another node (undecodable ones are logged and skipped)."""
        now = self._now()
        for rec in records:
            try:
                key, entry = decode_entry(rec, now)
            except CorruptStateError as exc:
                logger.warning("skipping a malformed rate-limit record: %s", exc)
                continue
            if self.merge(key, entry, partition):
                self.handoffs_in += 1

    def drop_partition(self, partition: int) -> None:
        """Forget ``partition`` (this node no longer replicates it)."""
        self._parts.pop(partition, None)

    def digest_partition(self, partition: int) -> Sequence[bytes]:
        """Per-bucket digests over ``(key, seq)`` pairs (times differ per node, seqs not)."""
        acc: list[list[bytes]] = [[] for _ in range(DIGEST_BUCKETS)]
        for k, e in self._parts.get(partition, {}).items():
            acc[bucket_for_key(k)].append(len(k).to_bytes(2, "big") + k + e.seq.to_bytes(8, "big"))
        out: list[bytes] = []
        for items in acc:
            if not items:
                out.append(b"")
                continue
            h = hashlib.blake2b(digest_size=16)
            for item in sorted(items):
                h.update(item)
            out.append(h.digest())
        return out
