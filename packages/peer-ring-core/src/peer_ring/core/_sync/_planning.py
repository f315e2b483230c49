"""Pure planning of pulls: what a ring change means for a node, and whom a pull asks.

No I/O and no clock: every function takes what it needs and returns a plan, so that the
rules are tested (with properties) apart from the asyncio driver
(:class:`~peer_ring.core._sync._puller.Puller`) and from the bookkeeping that applies
them (:class:`~peer_ring.core._sync._partitions.PartitionTable`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from peer_ring.core._ring import Ring
from peer_ring.core._sync._digests import HoldState, RemotePartition


@dataclass(frozen=True, slots=True)
class ChangePlan:
    """What one ring change means for one node.

    Attributes:
        replicated: the partitions the node replicates in the new ring.
        gained: partitions to pull, each with its *previous holders*: the nodes (other than
            this one) of its preference list in the old ring. They keep serving it, and
            reads are forwarded to them, until this node has pulled it.
        lost: partitions replicated before and not any more: held until handed off.
        reclaimed: gained partitions this node still held (lost earlier, not yet handed
            off): their records are kept and merged with what is pulled.
    """

    replicated: frozenset[int]
    gained: Mapping[int, tuple[str, ...]]
    lost: frozenset[int]
    reclaimed: frozenset[int]


def plan_ring_change(
    old: Ring,
    new: Ring,
    me: str,
    replication: int,
    replicated: frozenset[int],
    held: Collection[int] = (),
) -> ChangePlan:
    """Plan the pulls and handoffs of one node for a ring change.

    Args:
        old: the ring before the change.
        new: the ring after it.
        me: this node's address.
        replication: the replication N the node's partition table is kept at.
        replicated: the partitions the node replicated before the change (its table's,
            which may differ from ``old.partitions_of(me)`` if an earlier change was not
            seen).
        held: partitions the node holds for handoff.
    """
    after = new.partitions_of(me, replication)
    gained_set = after - replicated
    gained = {
        p: tuple(n for n in old.preference_list(p, replication) if n != me)
        for p in sorted(gained_set)
    }
    return ChangePlan(
        replicated=after,
        gained=MappingProxyType(gained),
        lost=frozenset(replicated - after),
        reclaimed=frozenset(p for p in held if p in gained_set),
    )


@dataclass(frozen=True, slots=True)
class PullRequests:
    """Whom one pull round asks for which partitions.

    Attributes:
        candidates: partition -> the nodes whose answers decide it (see ``decide_pull``).
        ask: node -> the partitions to ask it for (suspected nodes included: the caller
            skips them, and they count as not answering).
    """

    candidates: Mapping[int, list[str]]
    ask: Mapping[str, list[int]]


def plan_pull_requests(
    partitions: Iterable[int],
    holders_of: Mapping[int, Sequence[str]],
    me: str,
    discovered: Iterable[str],
    down: Collection[str],
    left: Collection[str],
) -> PullRequests:
    """Ask every live member for every partition, previous holders first.

    The data may be anywhere after several membership changes, so the whole live cluster
    is asked (digests are cheap); a node that left is still asked when it is a previous
    holder (it serves until it exits) but not otherwise.

    Args:
        partitions: the partitions of the round.
        holders_of: previous holders of each pending partition (missing: none).
        me: this node's address (never asked).
        discovered: every discovered node.
        down: nodes marked down (never asked).
        left: nodes that announced a leave (asked only as previous holders).
    """
    alive = [a for a in discovered if a != me and a not in down]
    members = [a for a in alive if a not in left]
    candidates: dict[int, list[str]] = {}
    ask: dict[str, list[int]] = {}
    for p in partitions:
        holders = [h for h in holders_of.get(p, ()) if h in alive]
        nodes = list(dict.fromkeys([*holders, *members]))
        candidates[p] = nodes
        for node in nodes:
            ask.setdefault(node, []).append(p)
    return PullRequests(MappingProxyType(candidates), MappingProxyType(ask))


def order_sources(
    sources: Sequence[tuple[str, RemotePartition]],
    holders: Sequence[str],
    preference: Sequence[str],
) -> list[tuple[str, RemotePartition]]:
    """The order in which a partition's answers are merged: complete copies first, and
    among equals the previous holders, then the new preference list, then the rest."""
    order = [*holders, *preference]
    rank = {node: i for i, node in reversed(list(enumerate(order)))}
    return sorted(
        sources,
        key=lambda item: (item[1].state is not HoldState.COMPLETE, rank.get(item[0], len(order))),
    )


def nothing_to_transfer(sources: Iterable[tuple[str, RemotePartition]]) -> bool:
    """True when every answer equals this node's copy or holds nothing (judged at once)."""
    return all(entry.equal or entry.state is HoldState.NONE for _, entry in sources)
