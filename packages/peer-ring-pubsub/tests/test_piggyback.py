"""Delivery records sent with the APPEND that carries their messages.

When a group consumer's long-poll waits on a partition, the sequencer claims the messages
of the partition's next APPEND for it and sends the delivery records with that APPEND, so
one round trip to W replicas makes both durable. A record of a sequence that is not
committed yet carries the append's epoch; if the append fails and a takeover fills the
sequence with something else, the record is *stale*: the sequencer hands the sequence out
again at once, and in a merge the record loses to any record of the entry that stayed.

These tests fail when that care is missing: a pure test per rule, a hypothesis simulation
of replicas (the real replica store, takeover and claim code) with appends failing part
way, takeovers and anti-entropy merges in any order, and an in-memory cluster.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer_ring.pubsub._codec import Reader, Writer
from peer_ring.pubsub._config import TopicConfig
from peer_ring.pubsub._errors import NotHeldError, StaleAckError
from peer_ring.pubsub._group import GroupState, Pending
from peer_ring.pubsub._log import MESSAGE, NOOP, Ballot, Entry, PartitionLog
from peer_ring.pubsub._sequencer import adopt, learn_quorum
from peer_ring.pubsub._state import PartitionState, decode_group_state, encode_group_state
from peer_ring.pubsub._store import RefusedError, Store
from peer_ring.pubsub._wire import GROUP, AppendRequest, GroupRequest

CONFIG = TopicConfig(max_messages=10_000, max_bytes=10**9)
KEY = b"t/0"
G = "g"
ACK_WAIT = 10.0
MAX_DELIVER = 3


def _state(entries: dict[int, tuple[int, int]], group: GroupState) -> PartitionState:
    """A sequencer's partition: ``entries`` maps seq -> (offset epoch, kind)."""
    state = PartitionState(PartitionLog(CONFIG))
    for seq, (epoch, kind) in entries.items():
        state.log.add(Entry(epoch, seq, 0.0, "", b"", b"x", kind))
    state.groups[G] = group
    return state


def _claim(state: PartitionState, consumer: str, *, commit: int, epoch: int, now: float = 0.0):  # type: ignore[no-untyped-def]
    return state.claim(
        G,
        consumer,
        10,
        commit=commit,
        end=commit + 1,
        epoch=epoch,
        now=now,
        ack_wait=ACK_WAIT,
        max_deliver=MAX_DELIVER,
    )


# ------------------------------------------------------------------ pure rules
def test_a_stale_record_is_handed_out_at_once_and_wins_over_nothing() -> None:
    # X's record came with an append of epoch 3 that failed; epoch 5 put a new message at
    # 5. The record's deadline is far ahead (another node's monotonic clock).
    stale = Pending("x", 1, 0, 1e9, ACK_WAIT, epoch=3)
    state = _state({5: (5, MESSAGE)}, GroupState(floor=5, next=6, pending={5: stale}))
    claim = _claim(state, "y", commit=5, epoch=5)
    assert claim.deliver == [(5, 1)]  # not held back by X's deadline; count unchanged
    assert claim.delta is not None
    state.groups[G].merge(claim.delta)
    state.groups[G].merge(GroupState(floor=5, next=6, pending={5: stale}))  # arrives again
    assert state.groups[G].pending[5].consumer == "y"
    with pytest.raises(NotHeldError):
        state.groups[G].finish("x", [(5, 1)])  # X never received it
    state.groups[G].merge(state.groups[G].finish("y", [(5, 1)]))
    assert state.groups[G].is_done(5)


def test_a_stale_record_on_a_noop_is_finished_not_delivered() -> None:
    stale = Pending("x", 1, 0, 1e9, ACK_WAIT, epoch=3)
    state = _state({5: (5, NOOP)}, GroupState(floor=5, next=6, pending={5: stale}))
    claim = _claim(state, "y", commit=5, epoch=5)
    assert claim.deliver == []
    assert claim.delta is not None
    state.groups[G].merge(claim.delta)
    assert state.groups[G].floor == 6


def test_a_record_whose_entry_stayed_waits_for_its_deadline() -> None:
    # The append of epoch 3 reached W replicas (or a takeover adopted it): X may hold it.
    held = Pending("x", 1, 0, 30.0, ACK_WAIT, epoch=3)
    state = _state({5: (3, MESSAGE)}, GroupState(floor=5, next=6, pending={5: held}))
    assert _claim(state, "y", commit=5, epoch=5, now=29.0).deliver == []
    assert _claim(state, "y", commit=5, epoch=5, now=30.0).deliver == [(5, 2)]


@pytest.mark.parametrize("stale_first", [True, False])
def test_a_stale_record_loses_every_merge_whatever_its_deadline(stale_first: bool) -> None:
    for stale, real in itertools.product(
        (
            Pending("x", 1, 0, 1e9, ACK_WAIT, epoch=3),  # another node's clock, far ahead
            Pending("x", 1, 1, float("-inf"), 0.0, epoch=3),  # x closed: RELEASE bumped it
        ),
        (
            Pending("y", 1, 0, 5.0, ACK_WAIT),  # made for the committed entry
            Pending("y", 1, 0, 5.0, ACK_WAIT, epoch=4),  # sent with the append of epoch 4
        ),
    ):
        a = GroupState(floor=5, next=6, pending={5: stale})
        b = GroupState(floor=5, next=6, pending={5: real})
        first, second = (a, b) if stale_first else (b, a)
        first.merge(second)
        assert first.pending[5] == real


def test_records_of_an_append_are_tentative_only_above_the_commit_point() -> None:
    # Committed 0..2 (not yet claimed), the append about to leave carries 3..4.
    state = _state(dict.fromkeys(range(3), (2, MESSAGE)), GroupState())
    claim = state.claim(
        G, "c", 10, commit=2, end=5, epoch=7, now=0.0, ack_wait=ACK_WAIT, max_deliver=5
    )
    assert claim.delta is not None
    assert [s for s, _ in claim.deliver] == [0, 1, 2, 3, 4]
    assert {s: p.epoch for s, p in claim.delta.pending.items()} == {0: 0, 1: 0, 2: 0, 3: 7, 4: 7}
    w = Writer()
    encode_group_state(w, claim.delta)
    assert decode_group_state(Reader(w.getvalue())).pending == claim.delta.pending


def test_an_append_carries_its_group_deltas_to_the_replica() -> None:
    store = Store(lambda key: 0, lambda: 0.0)
    delta = GroupState(floor=0, next=1, pending={0: Pending("c", 1, 0, 10.0, 10.0, epoch=1)})
    entry = Entry(1, 0, 0.0, "", b"", b"m")
    req = AppendRequest(CONFIG, Ballot(1, "a"), 0, -1, [entry], [(G, delta)])
    store.apply_append(KEY, AppendRequest.decode(req.encode()))
    state = store.states[KEY]
    assert state.log.get(0) == entry
    assert state.groups[G].pending == delta.pending
    # A fenced append changes neither the log nor the group.
    state.log.promise(Ballot(2, "b"))
    late = AppendRequest(CONFIG, Ballot(1, "a"), 0, -1, [], [(G, GroupState(floor=1, next=1))])
    with pytest.raises(RefusedError):
        store.apply_append(KEY, late)
    assert state.groups[G].floor == 0


# ------------------------------------------------------------------ simulation
@dataclass
class Seq:
    node: int
    epoch: int
    start: int
    next: int
    commit: int


class Simulation:
    """N replica stores; one sequencer at a time appends (with a waiting consumer's
    records when asked), claims, settles; appends and group updates reach random subsets;
    takeovers learn from R replicas; replicas merge each other's state at random."""

    def __init__(self, n: int, w: int) -> None:
        self.n, self.w, self.r = n, w, learn_quorum(n, w)
        self.replicas = [Store(lambda key: 0, lambda: 0.0) for _ in range(n)]
        for store in self.replicas:
            store.state(KEY, CONFIG).group(G)
        self.seq: Seq | None = None
        self.now = 0.0
        # Each node's monotonic clock is its own: deadlines made by different sequencers
        # are not comparable (the merge order must not depend on them).
        self.skew = [0.0, 500.0, -500.0, 250.0, -250.0][:n]
        self.counter = 0
        self.done: set[tuple[int, int]] = set()  # (seq, offset epoch) acked or dead-lettered
        # Acks a consumer sent whose replication failed: they may still take effect.
        self.tried: set[tuple[int, int]] = set()
        # seq -> (consumer, deliveries, offset epoch, deadline) as last handed out
        self.held: dict[int, tuple[str, int, int, float]] = {}

    def clock(self, node: int) -> float:
        return self.now + self.skew[node]

    def state(self, node: int) -> PartitionState:
        return self.replicas[node].state(KEY, CONFIG)

    def _send(self, targets: list[int], apply) -> bool:  # type: ignore[no-untyped-def]
        assert self.seq is not None
        ok = 0
        for t in sorted({self.seq.node, *targets}):
            try:
                apply(self.replicas[t])
                ok += 1
            except RefusedError:
                pass
        if ok < self.w:
            self.seq = None  # a failed replication steps the sequencer down
        return ok >= self.w

    def _handed_out(
        self,
        consumer: str,
        deliver: list[tuple[int, int]],
        log: PartitionLog,
        extra: dict[int, Entry],
    ) -> None:
        for seq, deliveries in deliver:
            entry = extra.get(seq) or log.get(seq)
            assert entry is not None and entry.kind == MESSAGE, f"{seq} is not a message"
            assert (seq, entry.epoch) not in self.done, f"finished message {seq} delivered again"
            holder = self.held.get(seq)
            if holder is not None:
                assert holder[2] == entry.epoch, f"the message at {seq} changed after delivery"
                if holder[0] != consumer:
                    assert holder[3] <= self.now, f"{seq} held by two consumers in one ack window"
            self.held[seq] = (consumer, deliveries, entry.epoch, self.now + ACK_WAIT)

    def takeover(self, node: int, others: list[int], targets: list[int]) -> None:
        quorum = list(dict.fromkeys([node, *others]))[: self.r]
        if len(quorum) < self.r:
            return
        seen = max(self.state(q).log.max_epoch for q in quorum)
        ballot = Ballot(seen + 1, str(node))
        grants = [q for q in quorum if self.state(q).log.promise(ballot)]
        if len(grants) < self.r:
            return
        last = max(self.state(q).log.last for q in grants)
        me = self.state(node)
        for q in grants:
            me.merge(self.state(q))
        tail = adopt(me.log, ballot, last, 0.0)
        group = me.group(G)
        group.restart_deadlines(self.clock(node))
        group.adopt_orphans(self.clock(node), lambda s: me.log.entries.kind(s) == MESSAGE)
        for seq, (consumer, deliveries, epoch, deadline) in list(self.held.items()):
            self.held[seq] = (consumer, deliveries, epoch, max(deadline, self.now + ACK_WAIT))
        self.seq = Seq(node, ballot.epoch, last + 1, last + 1, me.log.commit)
        append = AppendRequest(CONFIG, ballot, last + 1, me.log.commit, tail)
        copy = GroupRequest(CONFIG, ballot.epoch, G, group.copy())
        if self._send(targets, lambda s: s.apply_append(KEY, append)) and self._send(
            targets, lambda s: s.apply_group(KEY, copy)
        ):
            assert self.seq is not None
            self.seq.commit = last
            me.log.note_commit(last)

    def publish(
        self, count: int, waiting: str | None, targets: list[int], alongside: list[int] | None
    ) -> None:
        """Append ``count`` messages; with ``waiting``, claim them for that consumer as the
        APPEND leaves, its records in the APPEND (``alongside`` None) or, as for a fetch
        arriving while the APPEND is in flight, in a GROUP update sent to ``alongside``."""
        seq = self.seq
        if seq is None:
            return
        me = self.state(seq.node)
        entries = []
        for _ in range(count):
            self.counter += 1
            entries.append(Entry(seq.epoch, seq.next, 0.0, "", b"", b"m%d" % self.counter))
            seq.next += 1
        groups = []
        deliver: list[tuple[int, int]] = []
        if waiting is not None:  # Leaders._kick -> Service._piggyback
            claim = me.claim(
                G,
                waiting,
                3,
                commit=seq.commit,
                end=entries[-1].seq + 1,
                epoch=seq.epoch,
                now=self.clock(seq.node),
                ack_wait=ACK_WAIT,
                max_deliver=MAX_DELIVER,
            )
            assert claim.delta is not None
            me.merge_group(G, claim.delta)
            groups.append((G, claim.delta))
            deliver = claim.deliver
        ballot = Ballot(seq.epoch, str(seq.node))
        if alongside is not None and groups:
            update = GroupRequest(CONFIG, seq.epoch, G, groups[0][1])
            plain = AppendRequest(CONFIG, ballot, seq.start, seq.commit, entries)
            group_ok = self._send(alongside, lambda s: s.apply_group(KEY, update))
            self.seq = seq  # the APPEND left already: it goes on whatever the update does
            ok = self._send(targets, lambda s: s.apply_append(KEY, plain)) and group_ok
        else:
            req = AppendRequest(CONFIG, ballot, seq.start, seq.commit, entries, groups)
            ok = self._send(targets, lambda s: s.apply_append(KEY, req))
        if not ok:  # the consumer gets nothing unless both are on W replicas
            self.seq = None
        else:
            seq.commit = entries[-1].seq
            me.log.note_commit(seq.commit)
            if waiting is not None:
                self._handed_out(waiting, deliver, me.log, {e.seq: e for e in entries})

    def claim(
        self, consumer: str, limit: int, targets: list[int], requester: int | None = None
    ) -> None:
        """Claim committed messages for ``consumer``: its records on W replicas before it
        gets them, or (``requester``, the consumer's node holding a replica, and W = 2:
        Service._records_to_requester) in the reply, merged there under the fence before
        anything is handed out, the other replicas getting them afterwards."""
        seq = self.seq
        if seq is None:
            return
        me = self.state(seq.node)
        claim = me.claim(
            G,
            consumer,
            limit,
            commit=seq.commit,
            end=seq.commit + 1,
            epoch=seq.epoch,
            now=self.clock(seq.node),
            ack_wait=ACK_WAIT,
            max_deliver=MAX_DELIVER,
        )
        assert claim.delta is not None
        me.merge_group(G, claim.delta)
        req = GroupRequest(CONFIG, seq.epoch, G, claim.delta)
        if (
            requester is not None
            and requester != seq.node
            and self.w == 2
            and claim.deliver
            and me.log.accepts(seq.epoch)
        ):
            try:  # the consumer's node merges the reply's records (FetchBatcher)
                self.replicas[requester].apply_group(KEY, req)
                self._handed_out(consumer, claim.deliver, me.log, {})
            except RefusedError:
                pass  # nothing of it handed out
            self._send(targets, lambda s: s.apply_group(KEY, req))  # the follow-up
        elif self._send(targets, lambda s: s.apply_group(KEY, req)):
            self._handed_out(consumer, claim.deliver, me.log, {})
        if claim.dead and self.seq is not None:
            dead = GroupRequest(CONFIG, seq.epoch, G, me.group(G).mark_done(claim.dead))
            me.merge_group(G, dead.delta)
            if self._send(targets, lambda s: s.apply_group(KEY, dead)):
                for s in claim.dead:
                    entry = me.log.get(s)
                    assert entry is not None
                    self.done.add((s, entry.epoch))
                    self.held.pop(s, None)

    def settle(self, ack: bool, pick: int, targets: list[int]) -> None:
        seq = self.seq
        if not self.held or seq is None:
            return
        s = sorted(self.held)[pick % len(self.held)]
        consumer, deliveries, epoch, deadline = self.held[s]
        group = self.state(seq.node).group(G)
        try:
            delta = (
                group.finish(consumer, [(s, deliveries)])
                if ack
                else group.extend(consumer, s, deliveries, self.clock(seq.node), ACK_WAIT)
            )
        except (NotHeldError, StaleAckError):
            # Refusing the consumer that really holds the message is the bug a stale
            # record winning a merge would cause.
            assert deadline <= self.now, f"the holder of {s} was refused within its ack window"
            return
        group.merge(delta)
        if ack:
            self.tried.add((s, epoch))
        req = GroupRequest(CONFIG, seq.epoch, G, delta)
        if self._send(targets, lambda st_: st_.apply_group(KEY, req)):
            if ack:
                self.done.add((s, epoch))
                del self.held[s]
            else:
                self.held[s] = (consumer, deliveries, epoch, self.now + ACK_WAIT)


ops = st.one_of(
    st.tuples(
        st.just("publish"),
        st.integers(1, 3),
        st.sampled_from([None, "a", "b"]),
        st.lists(st.integers(0, 4), max_size=4),
        st.none() | st.lists(st.integers(0, 4), max_size=4),
    ),
    st.tuples(
        st.just("claim"),
        st.sampled_from("ab"),
        st.integers(1, 4),
        st.lists(st.integers(0, 4)),
        st.none() | st.integers(0, 4),  # records in the reply to this replica's consumer
    ),
    st.tuples(st.just("settle"), st.booleans(), st.integers(0, 9), st.lists(st.integers(0, 4))),
    st.tuples(st.just("time"), st.sampled_from([1.0, 5.0, 11.0])),
    st.tuples(
        st.just("takeover"),
        st.integers(0, 4),
        st.lists(st.integers(0, 4), max_size=4),
        st.lists(st.integers(0, 4), max_size=4),
    ),
    st.tuples(st.just("sync"), st.integers(0, 4), st.integers(0, 4)),
)


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from([(3, 2), (5, 3), (3, 3)]), st.lists(ops, max_size=60))
def test_records_sent_with_appends_keep_the_group_guarantees(
    nw: tuple[int, int], steps: list
) -> None:
    n, w = nw
    sim = Simulation(n, w)
    sim.takeover(0, list(range(n)), list(range(n)))
    for step in steps:
        kind = step[0]
        if kind == "publish":
            alongside = None if step[4] is None else [t % n for t in step[4]]
            sim.publish(step[1], step[2], [t % n for t in step[3]], alongside)
        elif kind == "claim":
            requester = None if step[4] is None else step[4] % n
            sim.claim(step[1], step[2], [t % n for t in step[3]], requester)
        elif kind == "settle":
            sim.settle(step[1], step[2], [t % n for t in step[3]])
        elif kind == "time":
            sim.now += step[1]
        elif kind == "takeover":
            sim.takeover(step[1] % n, [o % n for o in step[2]], [t % n for t in step[3]])
        else:
            sim.state(step[1] % n).merge(sim.state(step[2] % n))
    # Drain: a sequencer that reaches every replica, long after every ack window.
    everyone = list(range(n))
    for _ in range(100):  # each failed attempt raises the epoch its learn quorum knows
        sim.takeover(0, everyone, everyone)
        if sim.seq is not None:
            break
    assert sim.seq is not None
    sim.now += 1000.0
    for _ in range(2 * MAX_DELIVER + 2):
        sim.claim("z", 10_000, everyone)
    final = sim.state(sim.seq.node)
    group = final.group(G)
    for s in range(final.log.first, sim.seq.commit + 1):
        entry = final.log.get(s)
        assert entry is not None
        if entry.kind != MESSAGE:
            continue
        if group.is_done(s):
            # Finished only by an ack or a dead letter of this very message: nothing skipped.
            assert (s, entry.epoch) in sim.done | sim.tried, f"{s} finished without an ack"
        else:
            assert s in group.pending, f"message {s} neither finished nor delivered"
    # Every learn quorum knows every ack.
    for quorum in itertools.combinations(range(n), sim.r):
        state = GroupState()
        for q in quorum:
            state.merge(sim.state(q).group(G))
        for s, _ in sim.done:
            assert state.is_done(s), f"finish of {s} forgotten by quorum {quorum}"


# ------------------------------------------------------------------ cluster
async def test_a_waiting_consumers_delivery_records_ride_on_the_append(cluster) -> None:
    nodes = await cluster.start(3)
    topic_name = "pig"
    # A consumer on a node that is not the partition's sequencer: its FETCH waits there.
    probe = nodes[0].topic(topic_name, partitions=1)
    head = nodes[0].client.head(b"pig/0")
    consumer_node = next(ps for ps in nodes if ps.node.address != head)
    sequencer = next(ps for ps in nodes if ps.node.address == head)
    for ps in nodes:
        ps.topic(topic_name, partitions=1)
    # Replication requests: group deltas travel as GROUP requests or as APPEND sections
    # (with the entries, or without any when no APPEND leaves in their turn).
    groups_sent: list[int] = []
    appends_sent: list[int] = []
    real_many = sequencer.node.execute_many
    real_one = sequencer.node.execute

    async def count_many(namespace, command, items, **kwargs):  # type: ignore[no-untyped-def]
        items = list(items)
        (groups_sent if command is GROUP else appends_sent).append(len(items))
        return await real_many(namespace, command, items, **kwargs)

    async def count_one(namespace, command, key, payload, **kwargs):  # type: ignore[no-untyped-def]
        (groups_sent if command is GROUP else appends_sent).append(1)
        return await real_one(namespace, command, key, payload, **kwargs)

    sequencer.node.execute_many = count_many  # type: ignore[method-assign]
    sequencer.node.execute = count_one  # type: ignore[method-assign]
    topic = consumer_node.topic(topic_name, partitions=1)
    got = []
    async with topic.subscribe(group="g", ack_wait=30.0) as sub:
        await probe.publish(b"warm-up")  # the group exists and the consumer got one
        msg = await sub.next(timeout=30.0)
        assert msg is not None and msg.data == b"warm-up"
        await msg.ack()
        leaders = sequencer.leaders.leaders
        for i in range(5):
            # The consumer's long-poll is parked on the sequencer before the publish.
            await cluster.until(lambda: b"pig/0" in leaders and bool(leaders[b"pig/0"].parked))
            before, appends = len(groups_sent), len(appends_sent)
            await probe.publish(b"m%d" % i)
            msg = await sub.next(timeout=30.0)
            assert msg is not None
            got.append(msg.data)
            assert len(groups_sent) == before, "the delivery record took a GROUP request"
            assert len(appends_sent) == appends + 1, "the record took a request of its own"
            await msg.ack()
    assert got == [b"m%d" % i for i in range(5)]
    assert sequencer.service.piggybacked >= 5


def test_records_in_the_reply_are_known_to_a_takeover_that_misses_the_sequencer() -> None:
    # The records of a claim reached only the sequencer (0) and, in the reply, the
    # consumer's node (1); the sequencer dies before its follow-up replication. A takeover
    # by 1 with 2 (a learn quorum without the sequencer) must still see the message held.
    sim = Simulation(3, 2)
    sim.takeover(0, [0, 1, 2], [0, 1, 2])
    sim.publish(2, None, [0, 1, 2], None)
    sim.claim("a", 2, [], requester=1)  # the follow-up reaches nobody: 0 steps down
    assert set(sim.held) == {0, 1} and sim.seq is None
    sim.takeover(1, [2], [1, 2])
    assert sim.seq is not None and sim.seq.node == 1
    sim.claim("b", 10, [1, 2])  # b gets nothing a holds within a's ack window
    assert {s for s, (consumer, *_) in sim.held.items() if consumer == "b"} == set()
    # A consumer's node fenced off (it promised a newer epoch) hands nothing out.
    sim.publish(1, None, [1, 2], None)
    sim.state(0).log.promise(Ballot(sim.seq.epoch + 5, "9"))
    before = dict(sim.held)
    sim.claim("c", 10, [1, 2], requester=0)
    assert sim.held == before
