"""One replica's copy of a topic partition's log: entries, epochs, retention, dedup.

Offsets are ``(epoch, seq)``. ``seq`` numbers the partition's messages and keeps growing
across sequencer changes; ``epoch`` names the sequencer that assigned it. The rules that keep
every replica consistent whatever order records arrive in (the state is a join-semilattice,
so :meth:`PartitionLog.merge` is commutative, associative and idempotent):

* **Epoch starts.** When the sequencer of epoch ``E`` takes over it records ``start[E]``,
  the first sequence it assigns itself (one past the highest sequence it learned from a
  quorum). An entry ``(e, s)`` is *superseded* when some ``E > e`` has ``start[E] <= s``:
  it was never acknowledged (an acknowledged entry is on W replicas, so the new sequencer's
  quorum saw it and ``s < start[E]``), and it is dropped everywhere. This is Kafka's
  leader-epoch truncation, expressed as a merge rule.
* **Writers.** Besides its ``epoch`` (part of its offset, never changed), an entry carries
  ``writer``: the epoch of the last sequencer that replicated it. A new sequencer re-stamps
  the entries it adopts above the known commit point with its own epoch, so that an
  unacknowledged entry of an intermediate epoch, held only by a replica outside its quorum,
  can never override what it adopted. Supersession is decided on ``writer``.
* **One message per sequence.** At a sequence, the entry of the higher ``writer`` wins; a
  hole the new sequencer fills with a no-op only happens where no quorum member held
  anything, i.e. where nothing was acknowledged.
* **Commit.** ``commit`` is the highest sequence known acknowledged (carried by appends,
  max-merged); a takeover re-stamps only what lies above it.
* **Retention** moves ``first`` (the first retained sequence) forward only; a read below it
  raises :class:`OffsetOutOfRangeError`, it never jumps silently.
* Wall-clock time is stored per entry for age retention, the dedup window and replay by
  time only; it never orders anything. The sequencer stamps it with its own clock, never
  below the previous entry's time, so times are non-decreasing along the log and
  :meth:`PartitionLog.seek_time` can binary-search them. ``dropped_time`` (the newest time
  retention dropped, max-merged) tells whether a replay by time would skip dropped messages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any, TypeVar

from peer_ring.pubsub._config import TopicConfig
from peer_ring.pubsub._errors import OffsetOutOfRangeError

MESSAGE = 0
NOOP = 1


@dataclass(slots=True)
class Entry:
    """One log entry (never changed once made: copies are made with ``replace``; not
    frozen only because a frozen dataclass costs four times as much to build, and entries
    are built per message on every replica).

    Attributes:
        epoch: the epoch of the sequencer that assigned ``seq``.
        seq: the position in the partition (unique per partition once committed).
        time: the sequencer's wall-clock time at append (retention by age; never ordering).
        msg_id: the publisher's idempotency id, or "".
        key: the publisher's ordering key, or b"".
        data: the payload.
        kind: ``MESSAGE`` or ``NOOP`` (a hole filled at a sequencer takeover).
        writer: the epoch of the last sequencer that replicated it (>= ``epoch``).
    """

    epoch: int
    seq: int
    time: float
    msg_id: str
    key: bytes
    data: bytes
    kind: int = MESSAGE
    writer: int = -1

    def __post_init__(self) -> None:
        if self.writer < self.epoch:
            self.writer = self.epoch

    @property
    def size(self) -> int:
        """Bytes counted against ``max_bytes``."""
        return len(self.data) + len(self.key) + len(self.msg_id)


K = TypeVar("K")
V = TypeVar("V")


class TupleMap(MutableMapping[K, V]):
    """``key -> value`` for values a replica retains in bulk, each held as a plain tuple.

    A tuple of ints, floats, strings and bytes is untracked by CPython's garbage collector
    after the first young collection it survives; an object is tracked for its whole life.
    A replica retains up to ``max_messages`` entries per partition and a dedup record per
    ``msg_id`` for the whole ``dedup_window`` (240,000 records at 2,000 idempotent
    publishes/s over 120 s): as objects they made every full collection walk all of them
    (tens of milliseconds per 100,000, a pause of the whole node) and made full
    collections more frequent (each retained message counted as a survivor). Values are
    built on access by ``make(*row)``; subclasses write ``__setitem__`` (the row layout).
    """

    __slots__ = ("_rows",)
    make: Callable[..., V]

    def __init__(self) -> None:
        self._rows: dict[K, tuple[Any, ...]] = {}

    def get(self, key: K, default: V | None = None) -> V | None:  # type: ignore[override]
        """The value of ``key``, or ``default``."""
        row = self._rows.get(key)
        return default if row is None else self.make(*row)

    def __getitem__(self, key: K) -> V:
        return self.make(*self._rows[key])

    def __delitem__(self, key: K) -> None:
        del self._rows[key]

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    def __iter__(self) -> Iterator[K]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def items(self) -> Iterator[tuple[K, V]]:  # type: ignore[override]
        """``(key, value)`` pairs in insertion order (one pass over the rows)."""
        make = self.make
        for key, row in self._rows.items():
            yield key, make(*row)

    def values(self) -> Iterator[V]:  # type: ignore[override]
        """Values in insertion order."""
        make = self.make
        for row in self._rows.values():
            yield make(*row)

    def pop(self, key: K) -> V:  # type: ignore[override]
        """Remove and return the value of ``key`` (KeyError when absent)."""
        return self.make(*self._rows.pop(key))


class EntryMap(TupleMap[int, Entry]):
    """``seq -> Entry`` for a retained log (see :class:`TupleMap`), with field reads that
    do not build the entry."""

    __slots__ = ()
    make = Entry

    def __setitem__(self, seq: int, entry: Entry) -> None:
        self._rows[seq] = (
            entry.epoch,
            entry.seq,
            entry.time,
            entry.msg_id,
            entry.key,
            entry.data,
            entry.kind,
            entry.writer,
        )

    def kind(self, seq: int) -> int | None:
        """The kind of the entry at ``seq`` (None when absent), without building it."""
        row = self._rows.get(seq)
        return None if row is None else row[6]

    def time(self, seq: int) -> float:
        """The time of the entry at ``seq`` (KeyError when absent), without building it."""
        return self._rows[seq][2]  # type: ignore[no-any-return]

    def epoch(self, seq: int) -> int | None:
        """The offset epoch of the entry at ``seq`` (None when absent)."""
        row = self._rows.get(seq)
        return None if row is None else row[0]

    def writer(self, seq: int) -> int | None:
        """The writer epoch of the entry at ``seq`` (None when absent)."""
        row = self._rows.get(seq)
        return None if row is None else row[7]


@dataclass(frozen=True, slots=True, order=True)
class Ballot:
    """A sequencer's claim on a partition: epoch, then node address as a tie-break."""

    epoch: int = 0
    node: str = ""


@dataclass(frozen=True, slots=True)
class DedupRecord:
    """``msg_id`` was stored at ``(epoch, seq)`` at wall-clock ``time`` (``writer``: see Entry)."""

    msg_id: str
    epoch: int
    seq: int
    time: float
    writer: int = -1


class DedupMap(TupleMap[str, DedupRecord]):
    """``msg_id -> DedupRecord`` (see :class:`TupleMap`)."""

    __slots__ = ()
    make = DedupRecord

    def __setitem__(self, msg_id: str, record: DedupRecord) -> None:
        self._rows[msg_id] = (record.msg_id, record.epoch, record.seq, record.time, record.writer)


class PartitionLog:
    """A replica's copy of one topic partition's log (pure, no I/O)."""

    def __init__(self, config: TopicConfig) -> None:
        self.config = config
        self.entries = EntryMap()
        self.epoch_starts: dict[int, int] = {}
        self.promised = Ballot()
        self.first = 0
        self.commit = -1
        self.bytes = 0
        self.dedup = DedupMap()
        self._high = -1  # highest sequence held, or -1 (kept so appends stay O(1))
        self._top_epoch = -1  # the highest epoch in epoch_starts (see superseded)
        #: The newest ``time`` of an entry retention dropped (-inf: none dropped).
        self.dropped_time = float("-inf")

    # ----------------------------------------------------------------- queries
    @property
    def last(self) -> int:
        """The highest sequence held (``first - 1`` when empty)."""
        return self._high if self.entries else self.first - 1

    @property
    def max_epoch(self) -> int:
        """The highest epoch seen in promises, epoch starts or entries."""
        top = max(self.epoch_starts, default=0)
        return max(top, self.promised.epoch)

    def superseded(self, epoch: int, seq: int) -> bool:
        """True when a later epoch started at or below ``seq`` (the entry was never acked)."""
        if epoch >= self._top_epoch:  # no later epoch is known: the common case
            return False
        return any(e > epoch and start <= seq for e, start in self.epoch_starts.items())

    def get(self, seq: int) -> Entry | None:
        """The entry at ``seq``, if held."""
        return self.entries.get(seq)

    def read(self, start: int, upto: int, limit: int) -> list[Entry]:
        """Entries with ``start <= seq <= upto`` (at most ``limit``), no-ops included.

        Raises:
            OffsetOutOfRangeError: ``start`` is below the first retained sequence.
        """
        if start < self.first:
            raise OffsetOutOfRangeError(
                f"sequence {start} is below retention (first retained: {self.first})",
                requested=start,
                first=self.first,
            )
        out: list[Entry] = []
        seq = start
        while seq <= upto and len(out) < limit:
            entry = self.entries.get(seq)
            if entry is not None:
                out.append(entry)
            seq += 1
        return out

    def last_time(self) -> float:
        """The time of the highest entry held (-inf when empty): the floor of the next
        entry's time."""
        return self.entries.time(self._high) if self._high in self.entries else float("-inf")

    def seek_time(self, when: float, upto: int) -> int:
        """The first sequence in ``[first, upto]`` whose entry has ``time >= when``
        (``upto + 1`` when there is none yet): a binary search over the non-decreasing
        entry times.

        Raises:
            OffsetOutOfRangeError: retention dropped entries with ``time >= when`` (replaying
                from the first retained one would skip them silently).
        """
        if when <= self.dropped_time:
            raise OffsetOutOfRangeError(
                f"messages at or after time {when} were dropped by retention "
                f"(first retained: {self.first})",
                requested=self.first - 1,
                first=self.first,
            )
        lo, hi = self.first, min(upto, self.last) + 1
        while lo < hi:
            mid = (lo + hi) // 2
            seq = mid
            while seq < hi and seq not in self.entries:  # a gap: the next entry held
                seq += 1
            if seq == hi or self.entries.time(seq) >= when:
                hi = mid
            else:
                lo = seq + 1
        return lo if lo <= upto else upto + 1

    def lookup(self, msg_id: str) -> DedupRecord | None:
        """Where ``msg_id`` was stored, if it is still in the dedup window."""
        record = self.dedup.get(msg_id)
        if record is None or self.superseded(max(record.writer, record.epoch), record.seq):
            return None
        return record

    # --------------------------------------------------------------- mutations
    def promise(self, ballot: Ballot) -> bool:
        """Grant ``ballot`` unless a higher one (or another node's equal epoch) was granted."""
        if ballot.epoch > self.promised.epoch or ballot == self.promised:
            self.promised = ballot
            return True
        return False

    def accepts(self, epoch: int) -> bool:
        """True when appends of ``epoch`` are allowed (no newer sequencer was promised)."""
        return epoch >= self.promised.epoch

    def start_epoch(self, epoch: int, start: int) -> None:
        """Record that ``epoch``'s own sequences begin at ``start`` and drop what it supersedes."""
        known = self.epoch_starts.get(epoch)
        if known is not None and known <= start:
            return
        self.epoch_starts[epoch] = start
        self._top_epoch = max(self._top_epoch, epoch)
        for seq in [s for s, e in self.entries.items() if self.superseded(e.writer, s)]:
            self._remove(seq)
        for msg_id in [
            m for m, r in self.dedup.items() if self.superseded(max(r.writer, r.epoch), r.seq)
        ]:
            del self.dedup[msg_id]

    def add(self, entry: Entry) -> bool:
        """Merge one entry; True when it was stored (new, or replacing a lower epoch)."""
        if entry.seq < self.first or self.superseded(entry.writer, entry.seq):
            return False
        rows = self.entries._rows  # the hot path of every replica: no method calls
        seq, writer, msg_id, data, key, kind = (
            entry.seq,
            entry.writer,
            entry.msg_id,
            entry.data,
            entry.key,
            entry.kind,
        )
        existing = rows.get(seq)
        if existing is not None:
            if existing[7] >= writer:
                return False
            self._remove(seq)
        rows[seq] = (entry.epoch, seq, entry.time, msg_id, key, data, kind, writer)
        self.bytes += len(data) + len(key) + len(msg_id)
        if seq > self._high:
            self._high = seq
        if msg_id and kind == MESSAGE:
            self.add_dedup(
                DedupRecord(entry.msg_id, entry.epoch, entry.seq, entry.time, entry.writer)
            )
        return True

    def add_dedup(self, record: DedupRecord) -> None:
        """Merge one dedup record (the earliest valid position of a msg_id wins)."""
        if self.superseded(max(record.writer, record.epoch), record.seq):
            return
        known = self.dedup.get(record.msg_id)
        if (
            known is None
            or self.superseded(max(known.writer, known.epoch), known.seq)
            or (record.seq, record.epoch, -record.writer) < (known.seq, known.epoch, -known.writer)
        ):
            self.dedup[record.msg_id] = record

    def note_commit(self, commit: int) -> None:
        """Record that every sequence up to ``commit`` is acknowledged (monotonic)."""
        self.commit = max(self.commit, commit)

    def advance_first(self, first: int) -> None:
        """Drop every entry below ``first`` (retention decided elsewhere, or merged)."""
        if first <= self.first:
            return
        for seq in [s for s in self.entries if s < first]:
            self._remove(seq)
        self.first = first

    def apply_retention(self, now: float) -> int:
        """Drop the oldest entries beyond the topic's count/bytes/age limits; return how many."""
        config = self.config
        dropped = 0
        oldest_allowed = None if config.max_age is None else now - config.max_age
        rows = self.entries._rows
        while rows:
            seq = self._lowest()
            time = rows[seq][2]
            over = (
                len(rows) > config.max_messages
                or self.bytes > config.max_bytes
                or (oldest_allowed is not None and time < oldest_allowed)
            )
            if not over:
                break
            self._remove(seq)
            self.first = max(self.first, seq + 1)
            self.dropped_time = max(self.dropped_time, time)
            dropped += 1
        # Dedup records arrive in about time order (dict order = insertion order): drop
        # from the oldest and stop at the first one still in the window. A record merged
        # out of order may outlive its window a little; it never leaves early.
        horizon = now - config.dedup_window
        expired = []
        for msg_id, record in self.dedup.items():
            if record.time >= horizon:
                break
            expired.append(msg_id)
        for msg_id in expired:
            del self.dedup[msg_id]
        return dropped

    def merge(self, other: PartitionLog) -> None:
        """Join ``other`` into this log (commutative, associative, idempotent)."""
        if other.promised > self.promised:
            self.promised = other.promised
        for epoch, start in other.epoch_starts.items():
            self.start_epoch(epoch, start)
        self.advance_first(other.first)
        self.dropped_time = max(self.dropped_time, other.dropped_time)
        self.commit = max(self.commit, other.commit)
        for entry in other.entries.values():
            self.add(entry)
        for record in other.dedup.values():
            self.add_dedup(record)

    def iter_entries(self) -> Iterator[Entry]:
        """Entries in sequence order."""
        for seq in sorted(self.entries):
            yield self.entries[seq]

    def _lowest(self) -> int:
        # Entries are nearly contiguous from ``first``: scan a little, else fall back to min.
        seq = self.first
        for _ in range(64):
            if seq in self.entries:
                return seq
            seq += 1
        return min(self.entries)

    def _remove(self, seq: int) -> None:
        row = self.entries._rows.pop(seq)
        self.bytes -= len(row[5]) + len(row[4]) + len(row[3])  # data, key, msg_id: Entry.size
        if seq == self._high:
            self._high = max(self.entries, default=-1)
