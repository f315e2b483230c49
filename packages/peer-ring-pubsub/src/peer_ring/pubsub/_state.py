"""Everything a replica stores for one topic partition, and its record encoding.

A :class:`PartitionState` is the partition's :class:`PartitionLog` plus the state of every
consumer group reading it. Both halves merge as join-semilattices, so the records that the
core's data movement carries (``DataHooks``) can be applied in any order, twice, or late.

Records (opaque to the core) are self-describing: a kind byte, the ring key, then fields.
A partition exports one ``META`` record (config, promise, epoch starts, first retained
sequence, dedup window), its entries in chunks, and one record per group.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from peer_ring.pubsub._codec import CodecError, Reader, Writer
from peer_ring.pubsub._config import TopicConfig
from peer_ring.pubsub._group import Claim, GroupState, Pending
from peer_ring.pubsub._log import MESSAGE, Ballot, DedupRecord, Entry, PartitionLog

META = 1
ENTRIES = 2
GROUP = 3
ENTRIES_PER_RECORD = 256


@dataclass(slots=True)
class PartitionState:
    """One replica's copy of a topic partition: log and consumer groups."""

    log: PartitionLog
    groups: dict[str, GroupState] = field(default_factory=dict)

    def group(self, name: str) -> GroupState:
        """The group's state, created empty (at sequence 0) on first use."""
        state = self.groups.get(name)
        if state is None:
            state = self.groups[name] = GroupState()
        return state

    def merge_group(self, name: str, delta: GroupState) -> None:
        """Merge a group delta or copy."""
        self.group(name).merge(delta)

    def claim(
        self,
        name: str,
        consumer: str,
        limit: int,
        *,
        commit: int,
        end: int,
        epoch: int,
        now: float,
        ack_wait: float,
        max_deliver: int,
    ) -> Claim:
        """The sequencer's claim for ``consumer`` of group ``name`` (see
        :meth:`GroupState.claim`): sequences up to ``commit`` are in this log; those in
        ``(commit, end)`` are the messages of the APPEND of ``epoch`` about to leave
        (``end == commit + 1``: none). A pending record made with an earlier append is
        stale when the entry at its sequence has another epoch (or, above ``commit``, is
        this append's)."""
        entries = self.log.entries
        kind_of = entries.kind
        epoch_of = entries.epoch

        def is_message(seq: int) -> bool:
            return seq > commit or kind_of(seq) == MESSAGE

        def stale(seq: int, p: Pending) -> bool:
            if seq > commit:
                return True
            held = epoch_of(seq)
            return held is not None and held != p.epoch

        return self.group(name).claim(
            consumer,
            limit,
            is_message,
            self.log.first,
            end,
            now,
            ack_wait,
            max_deliver,
            stale=stale,
            tentative_after=commit,
            epoch=epoch,
        )

    def merge(self, other: PartitionState) -> None:
        """Join ``other`` into this state."""
        self.log.merge(other.log)
        for name, state in other.groups.items():
            self.merge_group(name, state)

    def records(self, key: bytes) -> Iterator[bytes]:
        """Export this state as mergeable records (see the module docstring)."""
        yield encode_meta(key, self.log)
        batch: list[Entry] = []
        for entry in self.log.iter_entries():
            batch.append(entry)
            if len(batch) == ENTRIES_PER_RECORD:
                yield encode_entries(key, batch)
                batch = []
        if batch:
            yield encode_entries(key, batch)
        for name, state in sorted(self.groups.items()):
            yield encode_group(key, name, state)

    def digest(self) -> bytes:
        """A digest equal on two replicas holding the same state (order-independent)."""
        h = hashlib.blake2b(digest_size=16)
        log = self.log
        w = Writer().u64(log.first).i64(log.commit).u64(log.promised.epoch)
        w.str_(log.promised.node)
        for epoch, start in sorted(log.epoch_starts.items()):
            w.u64(epoch).u64(start)
        h.update(w.getvalue())
        for seq in sorted(log.entries):
            entry = log.entries[seq]
            h.update(Writer().u64(seq).u64(entry.epoch).u64(entry.writer).getvalue())
        for msg_id in sorted(log.dedup):
            h.update(msg_id.encode())
        for name, state in sorted(self.groups.items()):
            h.update(encode_group(b"", name, state))
        return h.digest()


# ------------------------------------------------------------------- encoding
# One fixed-size header per entry (epoch, seq, time, kind, writer and the three lengths),
# packed at once: entries are the bulk of every append, fetch reply and transfer.
_ENTRY_HEADER = struct.Struct(">QQdQQIII")


def encode_entry(w: Writer, entry: Entry) -> None:
    """Append one entry to ``w``."""
    msg_id = entry.msg_id.encode()
    w.raw(
        _ENTRY_HEADER.pack(
            entry.epoch,
            entry.seq,
            entry.time,
            entry.kind,
            entry.writer,
            len(msg_id),
            len(entry.key),
            len(entry.data),
        )
    )
    w.raw(msg_id + entry.key + entry.data)


def decode_entry(r: Reader) -> Entry:
    """Read one entry written by :func:`encode_entry`.

    Raises:
        CodecError: a truncated buffer or an invalid msg_id.
    """
    epoch, seq, time, kind, writer, n_id, n_key, n_data = r.unpack(_ENTRY_HEADER)
    body = r.take_bytes(n_id + n_key + n_data)
    try:
        msg_id = body[:n_id].decode()
    except UnicodeDecodeError as exc:
        raise CodecError("invalid UTF-8 msg_id") from exc
    return Entry(
        epoch,
        seq,
        time,
        msg_id,
        body[n_id : n_id + n_key],
        body[n_id + n_key :],
        kind,
        writer,
    )


def decode_entries(r: Reader, count: int) -> list[Entry]:
    """Read ``count`` entries written by :func:`encode_entry` (one pass over the buffer:
    entries are the bulk of every append, fetch reply and transfer).

    Raises:
        CodecError: a truncated buffer or an invalid msg_id.
    """
    buf, pos = r.raw()
    end = len(buf)
    unpack = _ENTRY_HEADER.unpack_from
    size = _ENTRY_HEADER.size
    out = []
    try:
        for _ in range(count):
            if pos + size > end:
                raise CodecError("truncated buffer")
            epoch, seq, time, kind, writer, n_id, n_key, n_data = unpack(buf, pos)
            pos += size
            stop = pos + n_id + n_key + n_data
            if stop > end:
                raise CodecError("truncated buffer")
            msg_id = buf[pos : pos + n_id].decode() if n_id else ""
            pos += n_id
            key = buf[pos : pos + n_key] if n_key else b""
            out.append(Entry(epoch, seq, time, msg_id, key, buf[pos + n_key : stop], kind, writer))
            pos = stop
    except UnicodeDecodeError as exc:
        raise CodecError("invalid UTF-8 msg_id") from exc
    r.seek(pos)
    return out


def encode_epoch_starts(w: Writer, starts: dict[int, int]) -> None:
    """Append an epoch-start map."""
    w.u64(len(starts))
    for epoch, start in sorted(starts.items()):
        w.u64(epoch).u64(start)


def decode_epoch_starts(r: Reader) -> dict[int, int]:
    """Read an epoch-start map."""
    return {r.u64(): r.u64() for _ in range(r.u64())}


#: Bound on the sequences one decoded run may cover (a corrupt count must not allocate
#: without limit).
_MAX_RUN = 1 << 24


def encode_group_state(w: Writer, state: GroupState) -> None:
    """Append a group state (or delta).

    ``done`` is written as ranges of consecutive sequences and ``pending`` as runs of
    consecutive sequences holding equal entries (one fetch hands a batch out to one
    consumer with one deadline): a delta costs O(runs), not O(messages).
    """
    w.u64(state.floor).u64(state.next)
    done = sorted(state.done)
    ranges: list[list[int]] = []
    for seq in done:
        if ranges and ranges[-1][0] + ranges[-1][1] == seq:
            ranges[-1][1] += 1
        else:
            ranges.append([seq, 1])
    w.u64(len(ranges))
    for start, count in ranges:
        w.u64(start).u64(count)
    runs: list[tuple[int, int, Pending]] = []
    for seq, p in sorted(state.pending.items()):
        if runs:
            start, count, q = runs[-1]
            if start + count == seq and (q is p or q == p):
                runs[-1] = (start, count + 1, q)
                continue
        runs.append((seq, 1, p))
    w.u64(len(runs))
    for start, count, p in runs:
        w.u64(start).u64(count).str_(p.consumer).u64(p.deliveries).u64(p.rev)
        w.f64(p.deadline).f64(p.wait).u64(p.epoch)


def decode_group_state(r: Reader) -> GroupState:
    """Read a group state written by :func:`encode_group_state`.

    Raises:
        CodecError: a truncated buffer or a run longer than any real one.
    """
    state = GroupState(r.u64(), r.u64())
    for _ in range(r.u64()):
        start, count = r.u64(), r.u64()
        if count > _MAX_RUN:
            raise CodecError(f"a range of {count} done sequences")
        state.done.update(range(start, start + count))
    for _ in range(r.u64()):
        start, count = r.u64(), r.u64()
        if count > _MAX_RUN:
            raise CodecError(f"a run of {count} pending sequences")
        p = Pending(r.str_(), r.u64(), r.u64(), r.f64(), r.f64(), r.u64())
        for seq in range(start, start + count):
            state.pending[seq] = p
    return state


def encode_meta(key: bytes, log: PartitionLog) -> bytes:
    """The META record of a partition."""
    w = Writer().u64(META).bytes_(key)
    log.config.encode(w)
    w.u64(log.promised.epoch).str_(log.promised.node).u64(log.first).i64(log.commit)
    w.f64(log.dropped_time)
    encode_epoch_starts(w, log.epoch_starts)
    w.u64(len(log.dedup))
    for rec in log.dedup.values():
        w.str_(rec.msg_id).u64(rec.epoch).u64(rec.seq).f64(rec.time).u64(max(rec.writer, 0))
    return w.getvalue()


def encode_entries(key: bytes, entries: list[Entry]) -> bytes:
    """An ENTRIES record."""
    w = Writer().u64(ENTRIES).bytes_(key).u64(len(entries))
    for entry in entries:
        encode_entry(w, entry)
    return w.getvalue()


def encode_group(key: bytes, name: str, state: GroupState) -> bytes:
    """A GROUP record."""
    w = Writer().u64(GROUP).bytes_(key).str_(name)
    encode_group_state(w, state)
    return w.getvalue()


@dataclass(slots=True)
class DecodedRecord:
    """A record split into its ring key and the partial state it carries."""

    key: bytes
    config: TopicConfig | None
    state: PartitionState


def decode_record(record: bytes, default: TopicConfig) -> DecodedRecord:
    """Decode any record into a partial :class:`PartitionState` to merge.

    Raises:
        CodecError: a malformed record.
    """
    r = Reader(record)
    kind = r.u64()
    key = r.bytes_()
    config: TopicConfig | None = None
    log = PartitionLog(default)
    state = PartitionState(log)
    if kind == META:
        config = TopicConfig.decode(r)
        log.config = config
        log.promised = Ballot(r.u64(), r.str_())
        log.first = r.u64()
        log.commit = r.i64()
        log.dropped_time = r.f64()
        for epoch, start in decode_epoch_starts(r).items():
            log.start_epoch(epoch, start)
        for _ in range(r.u64()):
            dedup = DedupRecord(r.str_(), r.u64(), r.u64(), r.f64(), r.u64())
            log.dedup[dedup.msg_id] = dedup
    elif kind == ENTRIES:
        for entry in decode_entries(r, r.u64()):
            log.entries[entry.seq] = entry
    elif kind == GROUP:
        name = r.str_()
        state.groups[name] = decode_group_state(r)
    else:
        raise CodecError(f"unknown record kind {kind}")
    r.done()
    return DecodedRecord(key, config, state)
