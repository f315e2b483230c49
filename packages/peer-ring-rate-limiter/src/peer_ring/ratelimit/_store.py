"""The keys' states on one node, grouped by partition, and the core's data-movement hooks.

A node holds an entry for every key it replicates (the owner's decisions arrive with
``seq`` numbers; the higher one wins). Merging is idempotent and commutative, so the same
record may arrive through replication, hinted handoff, a partition pull or anti-entropy, in
any order.

The store is also a :class:`~peer_ring.core.VersionedDataHooks`: a record's key id is the
key's ``fingerprint64`` and its version the entry's ``seq`` (8 bytes, big-endian) and
whether it expired on its node (1 byte), so a node pulling a differing bucket receives
only the entries it lacks or holds at a lower seq. The merge replaces an expired entry
with any record, so the source also sends its entry for a key expired on the receiver,
as a whole-bucket transfer would, unless its own entry is expired at the same seq: two
expired entries of one seq mean the same (no entry, ordered by that seq).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence

from peer_ring.core import DIGEST_BUCKETS, bucket_for_key, fingerprint64
from peer_ring.ratelimit._compact import EXPIRES, SEQ, Packed, pack, unpack
from peer_ring.ratelimit._errors import CorruptStateError
from peer_ring.ratelimit._wire import Entry, decode_entry, encode_entry

#: The digests of a partition holding no entry (one empty digest per bucket).
_EMPTY_DIGESTS: tuple[bytes, ...] = (b"",) * DIGEST_BUCKETS
#: Partitions :meth:`StateStore.sweep_gradually` sweeps per event-loop turn (of the default
#: 2,048: 64 turns per sweep; at 100,000 keys on a node about 1,600 entries per turn).
SWEEP_PARTITIONS_PER_TURN = 32
#: Bytes of a version in ``record_versions``: the entry's seq and an "expired" flag.
VERSION_BYTES = 9
_SEQ_BYTES = 8

logger = logging.getLogger(__name__)


class StateStore:
    """Entries by partition and key, with times on this node's clock.

    Held as plain tuples of numbers (:mod:`peer_ring.ratelimit._compact`), which the garbage
    collector stops tracking, so the number of keys held does not lengthen full
    collections; :meth:`get` builds the :class:`Entry` on the way out.

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
        self._parts: dict[int, dict[bytes, Packed]] = {}
        # Digests by partition, dropped when the partition changes: an anti-entropy round
        # asks for the digests of every partition two nodes share (about 1,400 of the
        # default 2,048 at replication 2 on 3 nodes) in one pass of the event loop.
        self._digests: dict[int, tuple[bytes, ...]] = {}
        self.handoffs_in = 0  # records merged from other nodes' data movement
        self.handoffs_out = 0  # records exported for data movement

    def __len__(self) -> int:
        return sum(len(p) for p in self._parts.values())

    def get(self, key: bytes, partition: int | None = None) -> Entry | None:
        """The entry of ``key`` (expired or not), or None."""
        p = self._partition_of(key) if partition is None else partition
        part = self._parts.get(p)
        if part is None:
            return None
        packed = part.get(key)
        return None if packed is None else unpack(packed)

    def put(self, key: bytes, entry: Entry, partition: int | None = None) -> None:
        """Store ``entry`` as the key's newest (the caller decided it)."""
        p = self._partition_of(key) if partition is None else partition
        self._parts.setdefault(p, {})[key] = pack(entry)
        self._digests.pop(p, None)

    def merge(self, key: bytes, entry: Entry, partition: int) -> bool:
        """Keep ``entry`` if it is newer than the stored one (or that one expired)."""
        part = self._parts.setdefault(partition, {})
        old = part.get(key)
        if old is None or entry.seq > old[SEQ] or old[EXPIRES] <= self._now():
            part[key] = pack(entry)
            self._digests.pop(partition, None)
            return True
        return False

    def get_packed(self, key: bytes, partition: int) -> Packed | None:
        """The stored tuple of ``key`` (see ``_compact``), for ``_records.encode_packed``."""
        part = self._parts.get(partition)
        return None if part is None else part.get(key)

    def merge_packed(self, key: bytes, packed: Packed, partition: int) -> bool:
        """:meth:`merge` of an entry already in its stored form (``_records.decode_packed``):
        the replicas' path, which builds no entry or state object."""
        part = self._parts.get(partition)
        if part is None:
            part = self._parts[partition] = {}
        old = part.get(key)
        if old is None or packed[SEQ] > old[SEQ] or old[EXPIRES] <= self._now():
            part[key] = packed
            self._digests.pop(partition, None)
            return True
        return False

    def sweep(self, partitions: Iterable[int] | None = None) -> int:
        """Forget entries expired more than ``retain`` seconds ago (of ``partitions`` only,
        when given); return how many."""
        cutoff = self._now() - self._retain
        dropped = 0
        for p in list(self._parts) if partitions is None else partitions:
            part = self._parts.get(p)
            if part is None:
                continue
            old = [k for k, e in part.items() if e[EXPIRES] < cutoff]
            for k in old:
                del part[k]
            if old:
                self._digests.pop(p, None)
            dropped += len(old)
            if not part:
                del self._parts[p]
        return dropped

    async def sweep_gradually(self, per_turn: int = SWEEP_PARTITIONS_PER_TURN) -> int:
        """:meth:`sweep`, ``per_turn`` partitions per event-loop turn; return how many
        entries were forgotten.

        A sweep in one pass held the loop for every entry of the node at once (about 1 µs
        per entry: 16-20 ms for 20,000 entries on a busy core), a stall that every hit
        arriving meanwhile waited out, every ``retain / 2`` seconds.
        """
        dropped = 0
        parts = list(self._parts)
        for i in range(0, len(parts), per_turn):
            if i:
                await asyncio.sleep(0)
            dropped += self.sweep(parts[i : i + per_turn])
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
            encode_entry(k, unpack(e), now)
            for k, e in list(part.items())
            if wanted is None or bucket_for_key(k) in wanted
        ]
        self.handoffs_out += len(out)
        return out

    def apply_records(self, partition: int, records: Sequence[bytes]) -> int:
        """Merge records of another node (undecodable ones are logged and skipped); returns
        how many changed the store."""
        now = self._now()
        changed = 0
        for rec in records:
            try:
                key, entry = decode_entry(rec, now)
            except CorruptStateError as exc:
                logger.warning("skipping a malformed rate-limit record: %s", exc)
                continue
            if self.merge(key, entry, partition):
                changed += 1
        self.handoffs_in += changed
        return changed

    # -- VersionedDataHooks ------------------------------------------------------------

    def _entries(self, partition: int, buckets: Collection[int]) -> list[tuple[bytes, Packed]]:
        wanted = set(buckets)
        part = self._parts.get(partition, {})
        return [(k, e) for k, e in list(part.items()) if bucket_for_key(k) in wanted]

    def record_versions(
        self, partition: int, buckets: Collection[int]
    ) -> Iterator[tuple[int, bytes]]:
        """``(fingerprint64(key), seq + expired flag)`` of every entry of ``buckets``."""
        now = self._now()
        return ((fingerprint64(k), _version(e, now)) for k, e in self._entries(partition, buckets))

    def export_newer(
        self, partition: int, buckets: Collection[int], known: Mapping[int, bytes]
    ) -> Iterator[bytes]:
        """The entries of ``buckets`` that the receiver's merge would take, as records:
        its key is missing from ``known`` (the receiver's :meth:`record_versions`), held
        at a lower seq, or held expired (unless this entry is expired at the same seq).

        Raises:
            CorruptStateError: a version in ``known`` is not 9 bytes.
        """
        now = self._now()
        for k, e in self._entries(partition, buckets):
            theirs = known.get(fingerprint64(k))
            if theirs is not None:
                if len(theirs) != VERSION_BYTES:
                    raise CorruptStateError(
                        f"a version is {VERSION_BYTES} bytes, got {len(theirs)}"
                    )
                seq = int.from_bytes(theirs[:_SEQ_BYTES], "big")
                if theirs[_SEQ_BYTES]:  # expired there: any record replaces it
                    if seq == e[SEQ] and e[EXPIRES] <= now:
                        continue
                elif seq >= e[SEQ]:
                    continue
            self.handoffs_out += 1
            yield encode_entry(k, unpack(e), now)

    def drop_partition(self, partition: int) -> None:
        """Forget ``partition`` (this node no longer replicates it)."""
        self._parts.pop(partition, None)
        self._digests.pop(partition, None)

    def digest_partition(self, partition: int) -> Sequence[bytes]:
        """Per-bucket digests over ``(key, seq)`` pairs (times differ per node, seqs not).

        Kept until the partition changes, and computed only for the buckets that hold
        entries: the core asks for every shared partition's digests at once, in one pass
        of the event loop, and the former computation (64 lists and 64 appends per
        partition, empty ones included) held the loop for 14-44 ms per round on 3 nodes.
        """
        cached = self._digests.get(partition)
        if cached is not None:
            return cached
        part = self._parts.get(partition)
        if not part:
            return _EMPTY_DIGESTS
        groups: dict[int, list[bytes]] = {}
        for k, e in part.items():
            item = len(k).to_bytes(2, "big") + k + e[SEQ].to_bytes(8, "big")
            b = bucket_for_key(k)
            items = groups.get(b)
            if items is None:
                groups[b] = [item]
            else:
                items.append(item)
        out = list(_EMPTY_DIGESTS)
        for b, items in groups.items():
            h = hashlib.blake2b(digest_size=16)
            for item in sorted(items):
                h.update(item)
            out[b] = h.digest()
        digests = self._digests[partition] = tuple(out)
        return digests


def _version(entry: Packed, now: float) -> bytes:
    seq: int = entry[SEQ]
    return seq.to_bytes(_SEQ_BYTES, "big") + (b"\x01" if entry[EXPIRES] <= now else b"\x00")
