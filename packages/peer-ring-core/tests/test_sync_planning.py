"""The pure planning of pulls (``_sync/_planning.py``), tested without any I/O.

Properties over random rings: what a node gains and loses in a ring change, whom a pull
round asks, and in which order the answers are merged.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from peer_ring.core import Ring
from peer_ring.core._sync import (
    HoldState,
    PartitionTable,
    PullOutcome,
    RemotePartition,
    order_sources,
    plan_pull_requests,
    plan_ring_change,
)

P = 32
NODES = [f"10.0.0.{i}:7101" for i in range(1, 8)]
ME = NODES[0]

others = st.lists(st.sampled_from(NODES[1:]), min_size=0, max_size=6, unique=True)


@st.composite
def ring_change(draw: st.DrawFn) -> tuple[Ring, Ring, int, bool, bool]:
    n = draw(st.integers(1, 4))
    in_old = draw(st.booleans())
    in_new = draw(st.booleans())
    old_members = draw(others) + ([ME] if in_old else [])
    new_members = draw(others) + ([ME] if in_new else [])
    old = Ring.build(old_members or [NODES[1]], P)
    new = Ring.build(new_members or [NODES[1]], P)
    return old, new, n, in_old, in_new


@settings(max_examples=200, deadline=None)
@given(ring_change(), st.sets(st.integers(0, P - 1)))
def test_a_ring_change_gains_and_loses_exactly_the_difference(
    change: tuple[Ring, Ring, int, bool, bool], held: set[int]
) -> None:
    old, new, n, _, _ = change
    before = old.partitions_of(ME, n)
    plan = plan_ring_change(old, new, ME, n, before, held)
    after = new.partitions_of(ME, n)
    assert plan.replicated == after
    assert set(plan.gained) == after - before
    assert plan.lost == before - after
    assert not set(plan.gained) & plan.lost
    assert plan.reclaimed == held & set(plan.gained)
    for p, holders in plan.gained.items():
        # The previous holders are the old replicas of p other than this node, in order.
        assert holders == tuple(x for x in old.preference_list(p, n) if x != ME)


@settings(max_examples=100, deadline=None)
@given(others.filter(bool), st.integers(1, 3))
def test_a_joining_node_pulls_every_partition_from_its_old_replicas(
    members: list[str], n: int
) -> None:
    old = Ring.build(members, P)
    new = Ring.build([*members, ME], P)
    plan = plan_ring_change(old, new, ME, n, frozenset())
    assert set(plan.gained) == new.partitions_of(ME, n)
    assert not plan.lost
    assert all(holders == old.preference_list(p, n) for p, holders in plan.gained.items())


def test_an_unchanged_ring_plans_nothing() -> None:
    ring = Ring.build(NODES[:4], P)
    plan = plan_ring_change(ring, ring, ME, 3, ring.partitions_of(ME, 3), {1, 2})
    assert not plan.gained and not plan.lost and not plan.reclaimed


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, P - 1), unique=True, max_size=8),
    st.dictionaries(st.integers(0, P - 1), st.lists(st.sampled_from(NODES), max_size=3)),
    st.sets(st.sampled_from(NODES)),
    st.sets(st.sampled_from(NODES)),
)
def test_a_pull_asks_live_nodes_previous_holders_first(
    partitions: list[int], holders_of: dict[int, list[str]], down: set[str], left: set[str]
) -> None:
    plan = plan_pull_requests(partitions, holders_of, ME, NODES, down, left)
    assert set(plan.candidates) == set(partitions)
    for p, nodes in plan.candidates.items():
        assert ME not in nodes and not set(nodes) & down
        assert len(nodes) == len(set(nodes))
        live_holders = [h for h in dict.fromkeys(holders_of.get(p, ())) if h != ME]
        live_holders = [h for h in live_holders if h not in down]
        assert nodes[: len(live_holders)] == live_holders
        # A node that left is asked only as a previous holder (it serves until it exits).
        assert all(x in live_holders for x in nodes if x in left)
        # Every other live member is asked too: the data may be anywhere.
        assert {x for x in NODES if x != ME and x not in down and x not in left} <= set(nodes)
    # ``ask`` is exactly the inverse of ``candidates``.
    pairs = {(node, p) for p, nodes in plan.candidates.items() for node in nodes}
    assert pairs == {(node, p) for node, ps in plan.ask.items() for p in ps}


def test_complete_copies_are_merged_first_then_previous_holders() -> None:
    def entry(state: HoldState) -> RemotePartition:
        return RemotePartition(0, state, False, {})

    b, c, d, e = NODES[1:5]
    sources = [
        (e, entry(HoldState.COMPLETE)),
        (d, entry(HoldState.PENDING)),
        (c, entry(HoldState.COMPLETE)),
        (b, entry(HoldState.COMPLETE)),
    ]
    ordered = order_sources(sources, holders=[c], preference=[b, d])
    assert [node for node, _ in ordered] == [c, b, e, d]


# -- the table applies the plan (issue: readiness after losing pending partitions) ---------


def test_losing_the_last_pending_partitions_makes_the_table_ready() -> None:
    # A node starts in a ring of four and pulls; before it finishes, a fifth node joins
    # and takes over every partition it is still pulling. Nothing is pending any more,
    # so the node must be ready (it used to stay "not ready" until some later pull).
    ring = Ring.build(NODES[:4], P)
    t = PartitionTable(ME, 2)
    t.start(ring, 0.0)
    # A joiner that takes partitions from this node and gives it none.
    grown = next(
        g
        for g in (Ring.build([*NODES[:4], f"10.0.1.{i}:7101"], P) for i in range(1, 200))
        if g.partitions_of(ME, 2) < t.replicated
    )
    keep = grown.partitions_of(ME, 2)
    for p in keep:
        t.pull_result(p, PullOutcome.SYNCED, 1.0)
    lost_pending = set(t.pending)
    assert lost_pending and not t.ready
    change = t.ring_changed(ring, grown, 2.0)
    assert change.lost == lost_pending and not change.gained
    assert not t.pending
    assert t.ready
