"""Property tests of the partition log and sequencer takeover (pure, no I/O).

A hypothesis-driven simulation runs the replication protocol over N replica logs: sequencer
takeovers with quorum learning, appends reaching random subsets of replicas, stale
sequencers still appending, anti-entropy merges and replicas restarting empty and re-syncing.
Whatever happens, every acknowledged append stays at its offset, no sequence holds two
different acknowledged messages, and merges commute.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer_ring.pubsub._config import TopicConfig
from peer_ring.pubsub._errors import OffsetOutOfRangeError
from peer_ring.pubsub._log import MESSAGE, Ballot, Entry, PartitionLog
from peer_ring.pubsub._sequencer import adopt, learn_quorum
from peer_ring.pubsub._state import PartitionState, decode_record

CONFIG = TopicConfig(max_messages=10_000, max_bytes=10**9)


@dataclass
class Seq:
    node: int
    epoch: int
    start: int
    next: int
    commit: int


def merged(logs: list[PartitionLog]) -> PartitionLog:
    out = PartitionLog(CONFIG)
    for log in logs:
        out.merge(log)
    return out


def deliver(log: PartitionLog, seq: Seq, entries: list[Entry]) -> bool:
    if not log.accepts(seq.epoch):
        return False
    log.promise(Ballot(seq.epoch, str(seq.node))) if seq.epoch > log.promised.epoch else None
    log.start_epoch(seq.epoch, seq.start)
    log.note_commit(seq.commit)
    for entry in entries:
        log.add(entry)
    return True


class Simulation:
    def __init__(self, n: int, w: int) -> None:
        self.n, self.w, self.r = n, w, learn_quorum(n, w)
        self.replicas = [PartitionLog(CONFIG) for _ in range(n)]
        self.acked: dict[int, tuple[int, bytes]] = {}
        self.sequencers: list[Seq] = []
        self.counter = 0

    def check_holds_acked(self, log: PartitionLog) -> None:
        for seq, (epoch, data) in self.acked.items():
            entry = log.get(seq)
            assert entry is not None, f"acked sequence {seq} lost"
            assert (entry.epoch, entry.data) == (epoch, data), f"sequence {seq} changed"

    def takeover(self, node: int, others: list[int]) -> None:
        # Distinct nodes: a node listed twice must not count twice towards the quorum.
        quorum = [node, *dict.fromkeys(o for o in others if o != node)][: self.r]
        if len(quorum) < self.r:
            return
        seen = max(self.replicas[q].max_epoch for q in quorum)
        ballot = Ballot(seen + 1, str(node))
        grants = [q for q in quorum if self.replicas[q].promise(ballot)]
        if len(grants) < self.r:
            return
        last = max(self.replicas[q].last for q in grants)
        me = self.replicas[node]
        for q in grants:
            me.merge(self.replicas[q])
        tail = adopt(me, ballot, last, 0.0)
        # The learned log holds every acknowledged message: the heart of the protocol.
        self.check_holds_acked(me)
        seq = Seq(node, ballot.epoch, last + 1, last + 1, me.commit)
        targets = sorted({node, *others})
        ok = sum(deliver(self.replicas[t], seq, tail) for t in targets)
        if ok >= self.w:
            seq.commit = last
            self.sequencers.append(seq)

    def append(self, which: int, count: int, targets: list[int]) -> None:
        if not self.sequencers:
            return
        seq = self.sequencers[which % len(self.sequencers)]
        entries = []
        for _ in range(count):
            self.counter += 1
            data = f"m{self.counter}".encode()
            entries.append(Entry(seq.epoch, seq.next, 0.0, f"id{self.counter}", b"", data))
            seq.next += 1
        ok = sum(deliver(self.replicas[t], seq, entries) for t in sorted({seq.node, *targets}))
        if ok >= self.w:
            for e in entries:
                assert e.seq not in self.acked, f"sequence {e.seq} acknowledged twice"
                self.acked[e.seq] = (e.epoch, e.data)
            seq.commit = entries[-1].seq
        else:
            self.sequencers.remove(seq)  # a failed replication steps the sequencer down

    def restart_empty(self, node: int) -> None:
        # The core re-syncs a restarted replica from the other replicas before it is ready.
        fresh = PartitionLog(CONFIG)
        for i, other in enumerate(self.replicas):
            if i != node:
                fresh.merge(other)
        self.replicas[node] = fresh


ops = st.one_of(
    st.tuples(st.just("takeover"), st.integers(0, 4), st.lists(st.integers(0, 4), max_size=4)),
    st.tuples(st.just("append"), st.integers(0, 5), st.integers(1, 3), st.lists(st.integers(0, 4))),
    st.tuples(st.just("sync"), st.integers(0, 4), st.integers(0, 4)),
    st.tuples(st.just("restart"), st.integers(0, 4)),
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([(1, 1), (3, 2), (3, 3), (5, 3)]), st.lists(ops, max_size=40))
def test_acknowledged_appends_survive_any_takeover(nw: tuple[int, int], steps: list) -> None:
    n, w = nw
    sim = Simulation(n, w)
    for step in steps:
        kind = step[0]
        if kind == "takeover":
            sim.takeover(step[1] % n, [o % n for o in step[2]])
        elif kind == "append":
            sim.append(step[1], step[2], [t % n for t in step[3]])
        elif kind == "sync":
            sim.replicas[step[1] % n].merge(sim.replicas[step[2] % n])
        elif kind == "restart" and n > 1:
            sim.restart_empty(step[1] % n)
    # Any learn quorum a future sequencer could use holds every acknowledged message.
    for quorum in itertools.combinations(range(n), sim.r):
        sim.check_holds_acked(merged([sim.replicas[q] for q in quorum]))
    # Offsets are unique and monotonic in acknowledgement order within the final log.
    final = merged(sim.replicas)
    seqs = sorted(sim.acked)
    assert seqs == sorted(set(seqs))
    epochs = [sim.acked[s][0] for s in seqs]
    assert epochs == sorted(epochs), "a later sequence carries an older epoch"
    # Merging in any order gives the same log.
    backwards = merged(list(reversed(sim.replicas)))
    assert _view(final) == _view(backwards)
    # Exporting and re-importing the records gives the same log.
    state = PartitionState(final)
    copy = PartitionState(PartitionLog(CONFIG))
    for record in reversed(list(state.records(b"t/0"))):
        copy.merge(decode_record(record, CONFIG).state)
    assert _view(copy.log) == _view(final)
    assert copy.digest() == state.digest()


def _view(log: PartitionLog) -> dict[int, tuple[int, int, bytes, str]]:
    return {s: (e.epoch, e.writer, e.data, e.msg_id) for s, e in log.entries.items()}


def _entry(writer: int, seq: int) -> Entry:
    # The protocol writes one entry per (writer, seq): its epoch and content follow from them.
    epoch = 1 + (seq + writer) % writer
    msg_id = ["", "a", "b"][(epoch + seq) % 3]
    return Entry(epoch, seq, 0.0, msg_id, b"", f"{epoch}:{seq}".encode(), MESSAGE, writer)


entries = st.builds(_entry, st.integers(1, 5), st.integers(0, 20))


@given(
    st.lists(entries, max_size=12),
    st.dictionaries(st.integers(2, 5), st.integers(0, 20), max_size=3),
    st.permutations(range(3)),
)
def test_merge_is_order_independent(
    items: list[Entry], starts: dict[int, int], order: list[int]
) -> None:
    parts = [PartitionLog(CONFIG) for _ in range(3)]
    for i, entry in enumerate(items):
        parts[i % 3].add(entry)
    for i, (epoch, start) in enumerate(starts.items()):
        parts[i % 3].start_epoch(epoch, start)
    a = merged(parts)
    b = merged([parts[i] for i in order])
    c = merged([a, b, parts[0]])  # idempotent
    assert _view(a) == _view(b) == _view(c)
    for seq, entry in a.entries.items():
        assert not a.superseded(entry.writer, seq)


def test_read_below_retention_is_a_typed_error() -> None:
    log = PartitionLog(TopicConfig(max_messages=3))
    for seq in range(10):
        log.add(Entry(1, seq, float(seq), "", b"", b"x"))
        log.apply_retention(now=float(seq))
    assert log.first == 7
    assert [e.seq for e in log.read(7, 100, 100)] == [7, 8, 9]
    with pytest.raises(OffsetOutOfRangeError) as info:
        log.read(2, 100, 100)
    assert info.value.first == 7 and info.value.requested == 2


def test_retention_by_bytes_and_age() -> None:
    log = PartitionLog(TopicConfig(max_bytes=10, max_age=5.0))
    for seq in range(6):
        log.add(Entry(1, seq, float(seq), "", b"", b"abcd"))
        log.apply_retention(now=float(seq))
    assert log.bytes <= 10 and log.first == 4
    log.apply_retention(now=100.0)
    assert not log.entries and log.first == 6
    assert log.last == 5  # the end is remembered after everything expired


def test_dedup_survives_merge_and_expires() -> None:
    a, b = PartitionLog(CONFIG), PartitionLog(CONFIG)
    a.add(Entry(1, 0, 10.0, "order-42", b"", b"x"))
    b.merge(a)
    record = b.lookup("order-42")
    assert record is not None and (record.epoch, record.seq) == (1, 0)
    b.apply_retention(now=10.0 + CONFIG.dedup_window + 1)
    assert b.lookup("order-42") is None


def test_superseded_entry_is_dropped_and_refused() -> None:
    log = PartitionLog(CONFIG)
    log.add(Entry(1, 5, 0.0, "x", b"", b"old"))
    log.start_epoch(2, 5)
    assert log.get(5) is None and log.lookup("x") is None
    assert not log.add(Entry(1, 6, 0.0, "", b"", b"late"))
    assert log.add(Entry(2, 5, 0.0, "", b"", b"new"))


def test_promise_rules() -> None:
    log = PartitionLog(CONFIG)
    assert log.promise(Ballot(3, "a"))
    assert log.promise(Ballot(3, "a"))  # idempotent retry
    assert not log.promise(Ballot(3, "b"))  # the same epoch for another node
    assert not log.promise(Ballot(2, "z"))
    assert not log.accepts(2) and log.accepts(3)


def test_retained_entries_and_dedup_records_are_not_tracked_by_the_garbage_collector() -> None:
    # A retained message must cost nothing in a full collection (a pause of the whole
    # node proportional to the messages held): the log keeps plain tuples of atomic values,
    # which CPython untracks at their first young collection, and builds objects on access.
    import gc

    from peer_ring.pubsub._log import DedupRecord

    log = PartitionLog(CONFIG)
    for seq in range(1000):
        log.add(Entry(1, seq, float(seq), f"id-{seq}", b"k", b"payload"))
    gc.collect()
    assert not any(isinstance(obj, Entry | DedupRecord) for obj in gc.get_objects())
    held = list(log.entries.values())
    assert [e.seq for e in held] == list(range(1000)) and held[5].data == b"payload"
    assert log.get(7) == Entry(1, 7, 7.0, "id-7", b"k", b"payload")
    assert log.lookup("id-7") == DedupRecord("id-7", 1, 7, 7.0, 1) and len(log.dedup) == 1000
