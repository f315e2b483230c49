"""Sequencer takeover, as pure functions over replica logs.

A node that heads a partition's preference list becomes its sequencer in three steps
(Paxos phase 1 shaped, with Kafka's leader-epoch truncation as the merge rule):

1. **Learn and promise.** It picks a ballot above every epoch it has seen and asks the
   partition's N replicas to promise it; R = N - W + 1 grants are needed, so the granting
   set intersects every set of W replicas that acknowledged an append (the learned
   highest sequence ``M`` covers every acknowledged message) and every W-set an older
   sequencer could still append to (a promised replica refuses older epochs: the old
   sequencer can no longer get an acknowledgement).
2. **Adopt.** It merges what the granting replicas hold up to ``M``; a sequence none of them
   holds was never acknowledged and is filled with a no-op of the new epoch, so the log
   has no holes below ``M`` (:func:`fill_holes`).
3. **Start.** It records ``start[E] = M + 1`` (entries of older epochs at or above it are
   superseded everywhere), re-replicates the adopted tail to W replicas, and only then
   assigns sequences ``M + 1, M + 2, ...`` with its epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from peer_ring.pubsub._log import NOOP, Ballot, Entry, PartitionLog


def learn_quorum(replication: int, write_quorum: int) -> int:
    """Grants a takeover needs so that it intersects every write quorum: N - W + 1."""
    return max(1, replication - write_quorum + 1)


def choose_ballot(seen_epoch: int, node: str) -> Ballot:
    """A ballot above every epoch seen so far."""
    return Ballot(seen_epoch + 1, node)


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """What a granting replica reports: highest held, first retained, highest committed."""

    last: int
    first: int
    commit: int = -1


def takeover_range(statuses: list[ReplicaStatus]) -> tuple[int, int]:
    """``(first, last)``: the lowest retained sequence and the highest held, over grants.

    The new sequencer must hold every sequence in ``[first, last]`` before it starts.
    """
    first = min(s.first for s in statuses)
    last = max(s.last for s in statuses)
    return first, last


def fill_holes(log: PartitionLog, epoch: int, last: int, now: float) -> list[Entry]:
    """Add a no-op of ``epoch`` at every sequence in ``[log.first, last]`` nobody held.

    Returns the no-ops added (they are replicated with the adopted tail).
    """
    added: list[Entry] = []
    # A no-op takes the time of the entry before it (or, at the start, of the next one):
    # entry times stay non-decreasing whatever this node's clock says (see PartitionLog).
    previous: float | None = None
    for seq in range(log.first, last + 1):
        entry = log.entries.get(seq)
        if entry is not None:
            previous = entry.time
            continue
        if previous is None:
            after = next((log.entries[s] for s in range(seq, last + 1) if s in log.entries), None)
            previous = after.time if after is not None else now
        noop = Entry(epoch, seq, previous, "", b"", b"", NOOP)
        if log.add(noop):
            added.append(noop)
    return added


def adopt(log: PartitionLog, ballot: Ballot, last: int, now: float) -> list[Entry]:
    """Complete a takeover on the new sequencer's own log once it merged the grants.

    Fills holes up to ``last``, re-stamps every entry above the commit point with the new
    epoch as its ``writer`` (see :mod:`peer_ring.pubsub._log`), records the epoch start
    ``last + 1``, and returns the entries of ``(commit, last]``: the caller replicates them
    to W replicas before it assigns any new sequence.
    """
    epoch = ballot.epoch
    log.promise(ballot)
    fill_holes(log, epoch, last, now)
    tail: list[Entry] = []
    for seq in range(max(log.first, log.commit + 1), last + 1):
        entry = log.entries[seq]
        if entry.writer < epoch:
            entry = replace(entry, writer=epoch)
            log.add(entry)
        tail.append(entry)
    log.start_epoch(epoch, last + 1)
    return tail
