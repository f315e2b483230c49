"""Command declarations and payload encodings of the ``pubsub`` namespace.

Replica commands go through ``execute`` to the partition's N replicas; sequencer commands go
through ``call`` to the head of the preference list. Every sequencer reply starts with an
error code ("" for success) and a message, so typed errors cross the network intact.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

from peer_ring.core import Command
from peer_ring.pubsub._codec import CodecError, Reader, Writer
from peer_ring.pubsub._config import TopicConfig
from peer_ring.pubsub._errors import (
    InvalidOptionError,
    OffsetOutOfRangeError,
    PubSubError,
    error_from_code,
)
from peer_ring.pubsub._group import GroupState
from peer_ring.pubsub._log import Ballot, Entry
from peer_ring.pubsub._state import (
    decode_entries,
    decode_epoch_starts,
    decode_group_state,
    encode_entry,
    encode_epoch_starts,
    encode_group_state,
)

NAMESPACE = "pubsub"

# Replica commands (execute on the N replicas). Learning commands read: a replica still
# pulling the partition refuses them and the core asks a previous holder instead, so an
# empty restarted replica never answers "I hold nothing" in a learn quorum.
STATUS = Command("status", reads=True)
PROMISE = Command("promise", reads=True, mutates=True, hinted=False)
RANGE = Command("range", reads=True)
# Appends and group deltas are never hinted: a hint held by a node outside the preference
# list would not be seen by the next sequencer's learn quorum.
APPEND = Command("append", mutates=True, hinted=False)
GROUP = Command("group", mutates=True, hinted=False)
# Sequencer commands (call on the head of the preference list).
PUBLISH = Command("publish")
PUBLISH_MANY = Command("publish_many")  # sections for several partitions of one sequencer
SETTLE_MANY = Command("settle_many")  # acks of several partitions of one sequencer
FETCH = Command("fetch")
FETCH_MANY = Command("fetch_many")  # one long-poll for several partitions of one sequencer
SETTLE = Command("settle")

TOPIC_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")

ACK, NAK, PROGRESS, TERM, RELEASE = range(5)


def check_topic_name(name: object) -> str:
    """Return ``name`` if it is a valid topic name, else raise InvalidOptionError."""
    if not isinstance(name, str) or not TOPIC_NAME.fullmatch(name):
        raise InvalidOptionError(
            f"invalid topic name {name!r}: 1-200 characters of letters, digits and ._:- "
            "starting with a letter or digit"
        )
    return name


def ring_key(topic: str, partition: int) -> bytes:
    """The ring key of a topic partition."""
    return f"{topic}/{partition}".encode()


def split_key(key: bytes) -> tuple[str, int]:
    """``(topic, partition)`` of a ring key."""
    topic, _, partition = key.decode().rpartition("/")
    return topic, int(partition)


# ---------------------------------------------------------------- replies
def ok_reply(body: bytes = b"") -> bytes:
    """A success reply."""
    return Writer().str_("").str_("").getvalue() + body


def error_reply(exc: PubSubError) -> bytes:
    """An error reply carrying the error's code (and range details)."""
    w = Writer().str_(exc.code).str_(str(exc))
    if isinstance(exc, OffsetOutOfRangeError):
        w.i64(exc.partition).i64(exc.requested).i64(exc.first)
    return w.getvalue()


def open_reply(payload: bytes) -> Reader:
    """Return a reader positioned on the body, or raise the error the reply carries."""
    r = Reader(payload)
    code, message = r.str_(), r.str_()
    if code:
        if code == OffsetOutOfRangeError.code:
            raise OffsetOutOfRangeError(message, r.i64(), r.i64(), r.i64())
        raise error_from_code(code, message)
    return r


# ----------------------------------------------------------- replica commands
@dataclass(slots=True)
class AppendRequest:
    """Entries the sequencer of ``ballot`` replicates (also carries its epoch start), and
    the delivery records of consumers that were waiting for them (``groups``: group name
    and delta, merged with the entries by every replica that accepts the append)."""

    config: TopicConfig
    ballot: Ballot
    start: int
    commit: int
    entries: list[Entry]
    groups: list[tuple[str, GroupState]] = field(default_factory=list)

    def encode(self) -> bytes:
        w = Writer()
        self.config.encode(w)
        w.u64(self.ballot.epoch).str_(self.ballot.node).u64(self.start).i64(self.commit)
        w.u64(len(self.entries))
        for entry in self.entries:
            encode_entry(w, entry)
        w.u64(len(self.groups))
        for name, delta in self.groups:
            w.str_(name)
            encode_group_state(w, delta)
        return w.getvalue()

    @classmethod
    def decode(cls, payload: bytes) -> AppendRequest:
        r = Reader(payload)
        config = TopicConfig.decode(r)
        ballot = Ballot(r.u64(), r.str_())
        start, commit = r.u64(), r.i64()
        entries = decode_entries(r, r.u64())
        groups = [(r.str_(), decode_group_state(r)) for _ in range(r.u64())]
        r.done()
        return cls(config, ballot, start, commit, entries, groups)


@dataclass(slots=True)
class ReplicaStatusReply:
    """A replica's view of a partition (STATUS, and PROMISE when granted)."""

    max_epoch: int
    last: int
    first: int
    commit: int
    epoch_starts: dict[int, int] = field(default_factory=dict)
    groups: dict[str, GroupState] = field(default_factory=dict)

    def encode(self) -> bytes:
        w = Writer().u64(self.max_epoch).i64(self.last).u64(self.first).i64(self.commit)
        encode_epoch_starts(w, self.epoch_starts)
        w.u64(len(self.groups))
        for name, state in sorted(self.groups.items()):
            w.str_(name)
            encode_group_state(w, state)
        return w.getvalue()

    @classmethod
    def decode(cls, payload: bytes) -> ReplicaStatusReply:
        r = Reader(payload)
        reply = cls(r.u64(), r.i64(), r.u64(), r.i64(), decode_epoch_starts(r))
        for _ in range(r.u64()):
            name = r.str_()
            reply.groups[name] = decode_group_state(r)
        r.done()
        return reply


def encode_config_ballot(config: TopicConfig, ballot: Ballot) -> bytes:
    """STATUS / PROMISE payload."""
    w = Writer()
    config.encode(w)
    return w.u64(ballot.epoch).str_(ballot.node).getvalue()


def decode_config_ballot(payload: bytes) -> tuple[TopicConfig, Ballot]:
    """Inverse of :func:`encode_config_ballot`."""
    r = Reader(payload)
    config = TopicConfig.decode(r)
    ballot = Ballot(r.u64(), r.str_())
    r.done()
    return config, ballot


@dataclass(slots=True)
class GroupRequest:
    """A group delta replicated by the sequencer of epoch ``epoch``."""

    config: TopicConfig
    epoch: int
    group: str
    delta: GroupState

    def encode(self) -> bytes:
        w = Writer()
        self.config.encode(w)
        w.u64(self.epoch).str_(self.group)
        encode_group_state(w, self.delta)
        return w.getvalue()

    @classmethod
    def decode(cls, payload: bytes) -> GroupRequest:
        r = Reader(payload)
        config = TopicConfig.decode(r)
        epoch, group = r.u64(), r.str_()
        delta = decode_group_state(r)
        r.done()
        return cls(config, epoch, group, delta)


def encode_range(config: TopicConfig, start: int, upto: int, limit: int) -> bytes:
    """RANGE payload."""
    w = Writer()
    config.encode(w)
    return w.u64(start).i64(upto).u64(limit).getvalue()


def decode_range(payload: bytes) -> tuple[TopicConfig, int, int, int]:
    """Inverse of :func:`encode_range`."""
    r = Reader(payload)
    config = TopicConfig.decode(r)
    out = (config, r.u64(), r.i64(), r.u64())
    r.done()
    return out


def encode_entries_reply(first: int, starts: dict[int, int], entries: list[Entry]) -> bytes:
    """RANGE reply (and the body of FETCH replies)."""
    w = Writer().u64(first)
    encode_epoch_starts(w, starts)
    w.u64(len(entries))
    for entry in entries:
        encode_entry(w, entry)
    return w.getvalue()


def decode_entries_reply(r: Reader) -> tuple[int, dict[int, int], list[Entry]]:
    """Inverse of :func:`encode_entries_reply`."""
    first = r.u64()
    starts = decode_epoch_starts(r)
    return first, starts, decode_entries(r, r.u64())


# --------------------------------------------------------- sequencer commands
@dataclass(slots=True)
class OutgoingMessage:
    """One message to publish (not frozen: one is built per message, see Entry)."""

    data: bytes
    key: bytes
    msg_id: str


# Per message: the lengths of data, key and msg_id, then the three byte strings.
_MESSAGE_HEADER = struct.Struct(">III")
# Per publish result: epoch, sequence, duplicate.
_RESULT_SIZE = 24


def encode_publish(config: TopicConfig, messages: list[OutgoingMessage]) -> bytes:
    """PUBLISH payload."""
    w = Writer()
    config.encode(w)
    w.u64(len(messages))
    pack = _MESSAGE_HEADER.pack
    for m in messages:
        msg_id = m.msg_id.encode()
        w.raw(pack(len(m.data), len(m.key), len(msg_id)))
        w.raw(m.data)
        if m.key or msg_id:
            w.raw(m.key + msg_id)
    return w.getvalue()


def decode_publish(payload: bytes) -> tuple[TopicConfig, list[OutgoingMessage]]:
    """Inverse of :func:`encode_publish`.

    Raises:
        CodecError: a truncated or malformed payload (or an invalid UTF-8 msg_id).
    """
    r = Reader(payload)
    config = TopicConfig.decode(r)
    count = r.u64()
    buf, pos = r.raw()  # one pass over the buffer (a message costs one unpack)
    end = len(buf)
    unpack = _MESSAGE_HEADER.unpack_from
    size = _MESSAGE_HEADER.size
    messages = []
    try:
        for _ in range(count):
            if pos + size > end:
                raise CodecError("truncated buffer")
            n_data, n_key, n_id = unpack(buf, pos)
            pos += size
            stop = pos + n_data + n_key + n_id
            if stop > end:
                raise CodecError("truncated buffer")
            data = buf[pos : pos + n_data]
            if n_key or n_id:
                pos += n_data
                msg_id = buf[pos + n_key : stop].decode()
                messages.append(OutgoingMessage(data, buf[pos : pos + n_key], msg_id))
            else:
                messages.append(OutgoingMessage(data, b"", ""))
            pos = stop
    except UnicodeDecodeError as exc:
        raise CodecError("invalid UTF-8 msg_id") from exc
    r.seek(pos)
    r.done()
    return config, messages


def encode_publish_results(results: list[tuple[Entry, bool]]) -> bytes:
    """The body of a PUBLISH reply: ``(epoch, seq, duplicate)`` per message, packed at once."""
    flat: list[int] = []
    for entry, duplicate in results:
        flat += (entry.epoch, entry.seq, int(duplicate))
    return struct.pack(f">Q{len(flat)}Q", len(results), *flat)


def decode_publish_results(r: Reader) -> list[tuple[int, int, bool]]:
    """Inverse of :func:`encode_publish_results`.

    Raises:
        CodecError: a truncated reply.
    """
    count = r.u64()
    body = r.take_bytes(count * _RESULT_SIZE)  # raises CodecError when truncated
    flat = struct.unpack(f">{3 * count}Q", body)
    return [(flat[i], flat[i + 1], bool(flat[i + 2])) for i in range(0, len(flat), 3)]


def encode_publish_many(sections: list[tuple[bytes, TopicConfig, list[OutgoingMessage]]]) -> bytes:
    """PUBLISH_MANY payload: per partition, its ring key and a PUBLISH payload."""
    w = Writer().u64(len(sections))
    for key, config, messages in sections:
        w.bytes_(key).bytes_(encode_publish(config, messages))
    return w.getvalue()


def decode_publish_sections(
    payload: bytes,
) -> list[tuple[bytes, TopicConfig, list[OutgoingMessage]]]:
    """Inverse of :func:`encode_publish_many`.

    Raises:
        CodecError: a malformed payload.
    """
    r = Reader(payload)
    sections = []
    for _ in range(r.u64()):
        key = r.bytes_()
        config, messages = decode_publish(r.bytes_())
        sections.append((key, config, messages))
    r.done()
    return sections


def encode_publish_many_reply(parts: list[bytes]) -> bytes:
    """PUBLISH_MANY reply body: per section, a PUBLISH reply (results, or its error)."""
    w = Writer().u64(len(parts))
    for part in parts:
        w.bytes_(part)
    return w.getvalue()


def decode_publish_many(r: Reader, count: int) -> list[list[tuple[int, int, bool]] | BaseException]:
    """Per section: its ``(epoch, seq, duplicate)`` results, or the typed error it failed with.

    Raises:
        CodecError: a malformed reply, or not ``count`` sections.
    """
    out: list[list[tuple[int, int, bool]] | BaseException] = []
    for part in decode_section_replies(r, count):
        if isinstance(part, BaseException):
            out.append(part)
            continue
        out.append(decode_publish_results(part))
        part.done()
    return out


def decode_section_replies(r: Reader, count: int) -> list[Reader | PubSubError]:
    """The per-section replies of a ``*_MANY`` request: a reader on each body, or the typed
    error the section failed with.

    Raises:
        CodecError: a malformed reply, or not ``count`` sections.
    """
    if r.u64() != count:
        raise CodecError("reply with a wrong number of sections")
    out: list[Reader | PubSubError] = []
    for _ in range(count):
        try:
            out.append(open_reply(r.bytes_()))
        except PubSubError as exc:
            out.append(exc)
    r.done()
    return out


def encode_settle_many(sections: list[tuple[bytes, SettleRequest]]) -> bytes:
    """SETTLE_MANY payload: per partition, its ring key and a SETTLE payload."""
    w = Writer().u64(len(sections))
    for key, req in sections:
        w.bytes_(key).bytes_(req.encode())
    return w.getvalue()


def decode_settle_sections(payload: bytes) -> list[tuple[bytes, SettleRequest]]:
    """Inverse of :func:`encode_settle_many`.

    Raises:
        CodecError: a malformed payload.
    """
    r = Reader(payload)
    sections = [(r.bytes_(), SettleRequest.decode(r.bytes_())) for _ in range(r.u64())]
    r.done()
    return sections


@dataclass(slots=True)
class FetchRequest:
    """A consumer's long-poll: a group claim, or a plain read when ``group`` is ""."""

    config: TopicConfig
    group: str
    consumer: str
    start: int  # plain reads: the first sequence (-1: the end); groups: -1 latest, else 0
    limit: int
    wait: float
    ack_wait: float
    max_deliver: int
    #: Replay by time: start at the first message stamped at or after it (plain reads; a
    #: group being created). None: use ``start``.
    start_time: float | None = None
    #: The requesting node holds a replica of the partition and merges the delivery
    #: records sent in the reply (``FetchReply.records``) before handing anything out;
    #: set only by a requester that does (see ``Service._records_to_requester``).
    records_here: bool = False

    def encode(self) -> bytes:
        w = Writer()
        self.config.encode(w)
        w.str_(self.group).str_(self.consumer).i64(self.start).u64(self.limit)
        w.f64(self.wait).f64(self.ack_wait).u64(self.max_deliver)
        w.f64(-1.0 if self.start_time is None else self.start_time)
        if self.records_here:  # absent (the old encoding) when false
            w.u64(1)
        return w.getvalue()

    @classmethod
    def decode(cls, payload: bytes) -> FetchRequest:
        r = Reader(payload)
        config = TopicConfig.decode(r)
        req = cls(config, r.str_(), r.str_(), r.i64(), r.u64(), r.f64(), r.f64(), r.u64())
        when = r.f64()
        req.start_time = None if when < 0 or when != when else when  # < 0 / NaN: none
        if not r.at_end():
            req.records_here = r.u64() == 1
        r.done()
        return req


def encode_fetch_many(sections: list[tuple[bytes, FetchRequest]]) -> bytes:
    """FETCH_MANY payload: per partition, its ring key and a FETCH payload."""
    w = Writer().u64(len(sections))
    for key, req in sections:
        w.bytes_(key).bytes_(req.encode())
    return w.getvalue()


def decode_fetch_sections(payload: bytes) -> list[tuple[bytes, FetchRequest]]:
    """Inverse of :func:`encode_fetch_many`.

    Raises:
        CodecError: a malformed payload.
    """
    r = Reader(payload)
    sections = [(r.bytes_(), FetchRequest.decode(r.bytes_())) for _ in range(r.u64())]
    r.done()
    return sections


@dataclass(slots=True)
class FetchReply:
    """Messages handed out, with their delivery counts, and where a plain read continues."""

    entries: list[Entry]
    deliveries: list[int]
    next: int
    expired: int
    #: ``(epoch, delta)``: the delivery records of this claim, for a requester that holds
    #: a replica (``FetchRequest.records_here``) to merge under the epoch fence before it
    #: hands the messages out. None: they are on W replicas already.
    records: tuple[int, GroupState] | None = None

    def encode(self) -> bytes:
        count = len(self.entries)
        if len(self.deliveries) != count:
            raise ValueError("one delivery count per entry")
        w = Writer().u64(self.next).u64(self.expired).u64(count)
        for entry in self.entries:
            encode_entry(w, entry)
        w.raw(struct.pack(f">{count}Q", *self.deliveries))  # the counts, packed at once
        if self.records is not None:  # absent (the old encoding) when none
            w.u64(self.records[0])
            encode_group_state(w, self.records[1])
        return ok_reply(w.getvalue())

    @classmethod
    def decode(cls, payload: bytes) -> FetchReply:
        return cls.from_reader(open_reply(payload))

    @classmethod
    def from_reader(cls, r: Reader) -> FetchReply:
        nxt, expired, count = r.u64(), r.u64(), r.u64()
        entries = decode_entries(r, count)
        deliveries = list(struct.unpack(f">{count}Q", r.take_bytes(8 * count)))
        records = None
        if not r.at_end():
            records = (r.u64(), decode_group_state(r))
        r.done()
        return cls(entries, deliveries, nxt, expired, records)


@dataclass(slots=True)
class SettleRequest:
    """Ack / nak / in-progress / term / release of messages held by ``consumer``."""

    config: TopicConfig
    group: str
    consumer: str
    op: int
    wait: float
    items: list[tuple[int, int]]  # (seq, deliveries)

    def encode(self) -> bytes:
        w = Writer()
        self.config.encode(w)
        w.str_(self.group).str_(self.consumer).u64(self.op).f64(self.wait).u64(len(self.items))
        for seq, deliveries in self.items:
            w.u64(seq).u64(deliveries)
        return w.getvalue()

    @classmethod
    def decode(cls, payload: bytes) -> SettleRequest:
        r = Reader(payload)
        config = TopicConfig.decode(r)
        group, consumer, op, wait = r.str_(), r.str_(), r.u64(), r.f64()
        items = [(r.u64(), r.u64()) for _ in range(r.u64())]
        r.done()
        return cls(config, group, consumer, op, wait, items)
