"""Property tests of consumer-group state (pure, no I/O).

A simulated sequencer serves fetches, acks, naks and in-progress signals of several
consumers while time advances; every change is a delta replicated to a random subset of N
replicas (the operation succeeds only with W of them), replicas merge each other's state in
random order, and sequencers take over from a learn quorum. Whatever happens: an acked
message is never delivered again, no message is held by two consumers within one ack
window, cursors never move backwards, and merge order does not matter.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer_ring.pubsub._codec import Reader, Writer
from peer_ring.pubsub._errors import NotHeldError, StaleAckError
from peer_ring.pubsub._group import GroupState, Pending
from peer_ring.pubsub._sequencer import learn_quorum
from peer_ring.pubsub._state import decode_group_state, encode_group_state

ACK_WAIT = 10.0
MAX_DELIVER = 3


class Simulation:
    def __init__(self, n: int, w: int, end: int) -> None:
        self.n, self.w, self.r = n, w, learn_quorum(n, w)
        self.end = end
        self.replicas = [GroupState() for _ in range(n)]
        self.leader = 0
        self.state: GroupState | None = GroupState()  # the sequencer's working copy
        self.now = 0.0
        self.acked: set[int] = set()
        self.dead: set[int] = set()
        # seq -> (consumer, deliveries, deadline) as last reported to a consumer
        self.held: dict[int, tuple[str, int, float]] = {}

    def replicate(self, delta: GroupState, targets: list[int]) -> bool:
        assert self.state is not None
        self.state.merge(delta)  # applied on the sequencer first (its own replica)
        ok = 0
        for t in sorted({self.leader, *targets}):
            before = (self.replicas[t].floor, self.replicas[t].next)
            self.replicas[t].merge(delta)
            after = (self.replicas[t].floor, self.replicas[t].next)
            assert after >= before and after[0] >= before[0], "a cursor moved backwards"
            ok += 1
        if ok < self.w:
            self.state = None  # a failed replication steps the sequencer down
        return ok >= self.w

    def takeover(self, node: int, others: list[int]) -> None:
        quorum = list(dict.fromkeys([node, *others]))[: self.r]  # distinct replicas
        if len(quorum) < self.r:
            return
        state = GroupState()
        for q in quorum:
            state.merge(self.replicas[q])
        state.restart_deadlines(self.now)
        self.leader, self.state = node, state
        for seq, (consumer, deliveries, deadline) in list(self.held.items()):
            wait = state.pending[seq].wait if seq in state.pending else ACK_WAIT
            self.held[seq] = (consumer, deliveries, max(deadline, self.now + wait))

    def claim(self, consumer: str, limit: int, targets: list[int]) -> None:
        if self.state is None:
            return
        claim = self.state.claim(
            consumer, limit, lambda s: s % 5 != 4, 0, self.end, self.now, ACK_WAIT, MAX_DELIVER
        )
        assert claim.delta is not None
        for seq, _ in claim.deliver:
            assert seq not in self.acked, f"acked message {seq} delivered again"
            assert seq not in self.dead, f"dead-lettered message {seq} delivered again"
            holder = self.held.get(seq)
            if holder is not None and holder[0] != consumer:
                assert holder[2] <= self.now, f"{seq} held by two consumers in one ack window"
        if self.replicate(claim.delta, targets):
            for seq, deliveries in claim.deliver:
                self.held[seq] = (consumer, deliveries, self.now + ACK_WAIT)
        if (
            claim.dead
            and self.state is not None
            and self.replicate(self.state.mark_done(claim.dead), targets)
        ):
            self.dead.update(claim.dead)
            for seq in claim.dead:
                self.held.pop(seq, None)

    def settle(self, kind: str, pick: int, delay: float, targets: list[int]) -> None:
        if not self.held or self.state is None:
            return
        seq = sorted(self.held)[pick % len(self.held)]
        consumer, deliveries, _ = self.held[seq]
        try:
            if kind == "ack":
                delta = self.state.finish(consumer, [(seq, deliveries)])
            else:
                delta = self.state.extend(consumer, seq, deliveries, self.now, delay)
        except StaleAckError:
            return  # redelivered by a sequencer that never saw this consumer's last signal
        except NotHeldError:
            return
        if self.replicate(delta, targets):
            if kind == "ack":
                self.acked.add(seq)
                del self.held[seq]
            else:
                self.held[seq] = (consumer, deliveries, max(self.now + delay, 0.0))


steps = st.one_of(
    st.tuples(
        st.just("claim"), st.sampled_from("abc"), st.integers(1, 4), st.lists(st.integers(0, 4))
    ),
    st.tuples(st.just("ack"), st.integers(0, 9), st.just(0.0), st.lists(st.integers(0, 4))),
    st.tuples(
        st.just("extend"),
        st.integers(0, 9),
        st.sampled_from([1.0, 10.0, 30.0]),
        st.lists(st.integers(0, 4)),
    ),
    st.tuples(st.just("time"), st.sampled_from([1.0, 5.0, 11.0])),
    st.tuples(st.just("takeover"), st.integers(0, 4), st.lists(st.integers(0, 4), max_size=4)),
    st.tuples(st.just("sync"), st.integers(0, 4), st.integers(0, 4)),
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([(1, 1), (3, 2), (5, 3)]), st.lists(steps, max_size=50))
def test_group_invariants_under_failover(nw: tuple[int, int], ops: list) -> None:
    n, w = nw
    sim = Simulation(n, w, end=12)
    for op in ops:
        kind = op[0]
        if kind == "claim":
            sim.claim(op[1], op[2], [t % n for t in op[3]])
        elif kind in ("ack", "extend"):
            sim.settle(kind, op[1], op[2], [t % n for t in op[3]])
        elif kind == "time":
            sim.now += op[1]
        elif kind == "takeover":
            sim.takeover(op[1] % n, [o % n for o in op[2]])
        elif kind == "sync":
            a, b = op[1] % n, op[2] % n
            before = (sim.replicas[a].floor, sim.replicas[a].next)
            sim.replicas[a].merge(sim.replicas[b])
            assert (sim.replicas[a].floor, sim.replicas[a].next) >= before
    # Every learn quorum knows every reported ack.
    for quorum in itertools.combinations(range(n), sim.r):
        state = GroupState()
        for q in quorum:
            state.merge(sim.replicas[q])
        for seq in sim.acked | sim.dead:
            assert state.is_done(seq), f"ack of {seq} forgotten by quorum {quorum}"


groups = st.builds(
    GroupState,
    floor=st.integers(0, 5),
    next=st.integers(0, 10),
    done=st.sets(st.integers(0, 12), max_size=5),
    pending=st.dictionaries(
        st.integers(0, 12),
        st.builds(
            Pending,
            st.sampled_from("ab"),
            st.integers(1, 3),
            st.integers(0, 2),
            st.sampled_from([1.0, 2.0]),
            st.sampled_from([1.0, 10.0]),
        ),
        max_size=4,
    ),
)


def _view(g: GroupState) -> tuple[int, int, frozenset[int], dict[int, Pending]]:
    return (g.floor, g.next, frozenset(g.done), dict(g.pending))


@given(st.lists(groups, min_size=1, max_size=4), st.randoms())
def test_group_merge_is_order_independent(parts: list[GroupState], rnd) -> None:
    a = GroupState()
    for p in parts:
        a.merge(p)
    shuffled = list(parts)
    rnd.shuffle(shuffled)
    b = GroupState()
    for p in shuffled:
        b.merge(p)
    b.merge(a)  # idempotent
    assert _view(a) == _view(b)
    for seq in a.pending:
        assert not a.is_done(seq)
    w = Writer()
    encode_group_state(w, a)
    assert _view(decode_group_state(Reader(w.getvalue()))) == _view(a)


def test_stale_ack_after_redelivery_is_typed() -> None:
    g = GroupState()
    claim = g.claim("a", 1, lambda s: True, 0, 1, 0.0, ACK_WAIT, MAX_DELIVER)
    assert claim.delta is not None and claim.deliver == [(0, 1)]
    g.merge(claim.delta)
    again = g.claim("b", 1, lambda s: True, 0, 1, ACK_WAIT + 1, ACK_WAIT, MAX_DELIVER)
    assert again.delta is not None and again.deliver == [(0, 2)]
    g.merge(again.delta)
    with pytest.raises(StaleAckError):
        g.finish("a", [(0, 1)])
    with pytest.raises(NotHeldError):
        g.finish("a", [(5, 1)])
    g.merge(g.finish("b", [(0, 2)]))
    assert g.is_done(0) and g.floor == 1
    repeated = g.finish("b", [(0, 2)])  # a repeated ack is harmless
    g.merge(repeated)
    assert g.floor == 1 and not g.pending


def test_max_deliver_goes_to_dead_letter_and_expired_messages_move_the_cursor() -> None:
    g = GroupState()
    now = 0.0
    for attempt in range(1, MAX_DELIVER + 1):
        claim = g.claim("a", 1, lambda s: True, 0, 1, now, ACK_WAIT, MAX_DELIVER)
        assert claim.deliver == [(0, attempt)] and claim.delta is not None
        g.merge(claim.delta)
        now += ACK_WAIT
    claim = g.claim("a", 1, lambda s: True, 0, 1, now, ACK_WAIT, MAX_DELIVER)
    assert claim.deliver == [] and claim.dead == [0]
    g.merge(g.mark_done(claim.dead))
    assert g.floor == 1
    later = g.claim("a", 10, lambda s: True, 5, 7, now, ACK_WAIT, MAX_DELIVER)
    assert later.expired == 4 and [s for s, _ in later.deliver] == [5, 6]


def test_nak_delay_and_in_progress_move_the_deadline() -> None:
    g = GroupState()
    claim = g.claim("a", 1, lambda s: True, 0, 1, 0.0, ACK_WAIT, MAX_DELIVER)
    assert claim.delta is not None
    g.merge(claim.delta)
    g.merge(g.extend("a", 0, 1, 0.0, 100.0))  # in_progress / nak(delay)
    assert g.claim("b", 1, lambda s: True, 0, 1, 50.0, ACK_WAIT, MAX_DELIVER).deliver == []
    assert g.claim("b", 1, lambda s: True, 0, 1, 100.0, ACK_WAIT, MAX_DELIVER).deliver == [(0, 2)]


def test_orphans_lost_with_their_replicas_are_redelivered_after_a_takeover() -> None:
    # The delta that handed out 0 and 1 was lost; a later one (2) survived.
    g = GroupState(floor=0, next=3, pending={2: Pending("a", 1, 0, 50.0, 10.0)})
    assert g.adopt_orphans(7.0, lambda s: s != 1) == 1  # 1 is a no-op: finished
    claim = g.claim("b", 10, lambda s: True, 0, 3, 7.0, ACK_WAIT, MAX_DELIVER)
    assert [s for s, _ in claim.deliver] == [0]  # 2 is still held by a
    assert 1 not in g.pending and 1 in g.done
