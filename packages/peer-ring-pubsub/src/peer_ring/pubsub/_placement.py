"""Which node sequences each topic partition: a balanced pick among its replicas.

The head of a partition's preference list used to be its sequencer, so a topic's
partitions landed on the nodes as hashing put them: with 8 partitions over 3 nodes only
about a fifth of the rings split the sequencers 3/3/2, and one node often sequenced most of
them (and did most of the work). Here every node computes, from the ring and the topic's
partition count alone, the same assignment: partitions in order, each to the replica in its
preference list that sequences the fewest of the topic's partitions so far, ties to the
earlier one in the list (partition 0 always keeps its head). With N >= the number of nodes
that gives a split within one partition of even.

Safety never depends on this choice: any replica may sequence a partition after a takeover
(learn and promise from R = N - W + 1 replicas, epochs fence the old sequencer), as when
two nodes briefly disagree about the ring. Non-durable topics keep the head (their only
copy lives on the sequencer, which must be where the core puts replication 1).
"""

from __future__ import annotations

from peer_ring.core import PeerRing, Ring
from peer_ring.pubsub._config import TopicConfig
from peer_ring.pubsub._wire import ring_key, split_key

_UNKNOWN = object()


def sequencers(ring: Ring, topic: str, partitions: int, candidates: int) -> tuple[str, ...]:
    """The sequencer of each partition of ``topic`` in ``ring``.

    Args:
        ring: the ring (every node of the cluster computes the same answer from it).
        topic: the topic name.
        partitions: the topic's partition count.
        candidates: how many replicas of the preference list may sequence (the topic's
            replication; 1 keeps the head).

    Returns:
        One address per partition, in partition order.
    """
    counts: dict[str, int] = {}
    out: list[str] = []
    for partition in range(partitions):
        key = ring_key(topic, partition)
        prefs = ring.preference_list(ring.partition_for_key(key), candidates)
        best = prefs[0]
        best_count = counts.get(best, 0)
        for address in prefs[1:]:
            count = counts.get(address, 0)
            if count < best_count:
                best, best_count = address, count
        counts[best] = best_count + 1
        out.append(best)
    return tuple(out)


class Placement:
    """The sequencer of each partition key in the node's current ring, cached per ring.

    Topics are declared by :meth:`declare` (the client's ``topic()`` and the sequencer's
    requests, which carry the topic's config); a key of a topic this node has not seen
    yet falls back to the head of its preference list.
    """

    def __init__(self, node: PeerRing, replication: int) -> None:
        self.node = node
        self.replication = replication
        self._topics: dict[str, tuple[int, int]] = {}  # topic -> (partitions, candidates)
        self._ring: object = None
        self._heads: dict[bytes, str | None] = {}

    def declare(self, topic: str, config: TopicConfig) -> None:
        """Note ``topic``'s partition count and durability (idempotent)."""
        spec = (config.partitions, self.replication if config.durable else 1)
        if self._topics.get(topic) != spec:
            self._topics[topic] = spec
            self._ring = None  # recompute with it

    def declare_key(self, key: bytes, config: TopicConfig) -> None:
        """:meth:`declare` the topic of the ring key ``key``."""
        try:
            topic, _ = split_key(key)
        except ValueError:  # a malformed key (UnicodeDecodeError included): the head's
            return
        self.declare(topic, config)

    def sequencer(self, key: bytes) -> str | None:
        """The sequencer of ``key`` in the node's current ring (None: an empty ring)."""
        ring = self.node.ring
        if ring is not self._ring:  # a new ring: forget the cached assignment
            self._ring = ring
            self._heads = {}
        head = self._heads.get(key, _UNKNOWN)
        if head is _UNKNOWN:
            head = self._compute(ring, key)
        return head  # type: ignore[return-value]

    def sequencer_in(self, ring: Ring, key: bytes) -> str | None:
        """The sequencer of ``key`` in ``ring`` (an ownership change's ring, which may not
        be the node's current one yet)."""
        if ring is self.node.ring:
            return self.sequencer(key)
        return Placement(self.node, self.replication)._with(self._topics)._compute(ring, key)

    def _with(self, topics: dict[str, tuple[int, int]]) -> Placement:
        self._topics = dict(topics)
        return self

    def _compute(self, ring: Ring, key: bytes) -> str | None:
        try:
            topic, partition = split_key(key)
        except ValueError:
            spec = None
        else:
            spec = self._topics.get(topic)
        if spec is None or not 0 <= partition < spec[0]:
            prefs = ring.preference_list(ring.partition_for_key(key), self.replication)
            head = self._heads[key] = prefs[0] if prefs else None
            return head
        heads = sequencers(ring, topic, *spec)
        for p, address in enumerate(heads):
            self._heads[ring_key(topic, p)] = address
        return heads[partition]
