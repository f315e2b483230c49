"""An in-memory packet network on virtual time: loss, delay and partitions."""

from __future__ import annotations

import random
from collections.abc import Iterable

from peer_ring.discovery.gossip._messages import Address


class SimNetwork:
    """Decides the fate of each packet: dropped, or delivered after a delay.

    Args:
        rng: randomness for loss and delay (seed it).
        loss: probability that a UDP packet is dropped (TCP streams are not lost, TCP
            retransmits; they fail only across a partition or to a dead node).
        min_delay: smallest one-way delay (seconds).
        max_delay: largest one-way delay; each packet's delay is uniform in between.
    """

    def __init__(
        self,
        rng: random.Random,
        *,
        loss: float = 0.0,
        min_delay: float = 0.0005,
        max_delay: float = 0.002,
    ) -> None:
        if not 0.0 <= loss < 1.0:
            raise ValueError("loss must be in [0, 1)")
        if not 0.0 <= min_delay <= max_delay:
            raise ValueError("need 0 <= min_delay <= max_delay")
        self.rng = rng
        self.loss = loss
        self.min_delay = min_delay
        self.max_delay = max_delay
        self._group: dict[Address, int] = {}
        self._udp_blocked: set[Address] = set()
        self.dropped = 0

    def partition(self, *groups: Iterable[Address]) -> None:
        """Split the network: addresses in different groups cannot reach each other;
        addresses in no group are cut off from every group (but reach each other)."""
        self._group = {}
        for index, group in enumerate(groups, start=1):
            for addr in group:
                self._group[addr] = index

    def heal(self) -> None:
        """Remove every partition and UDP block."""
        self._group = {}
        self._udp_blocked = set()

    def block_udp(self, *addrs: Address) -> None:
        """Drop every UDP packet to or from ``addrs`` (TCP still gets through)."""
        self._udp_blocked.update(addrs)

    def reachable(self, src: Address, dst: Address) -> bool:
        """Whether ``src`` and ``dst`` are on the same side of the current partition."""
        return self._group.get(src, 0) == self._group.get(dst, 0)

    def delay(self) -> float:
        """One packet's one-way delay."""
        return self.rng.uniform(self.min_delay, self.max_delay)

    def udp_fate(self, src: Address, dst: Address) -> float | None:
        """The delay of one UDP packet from ``src`` to ``dst``, or None if it is lost."""
        if src in self._udp_blocked or dst in self._udp_blocked:
            self.dropped += 1
            return None
        return self.tcp_segment_fate(src, dst)

    def tcp_segment_fate(self, src: Address, dst: Address) -> float | None:
        """The delay of one TCP segment's first transmission, or None if it is lost."""
        if not self.reachable(src, dst) or (self.loss and self.rng.random() < self.loss):
            self.dropped += 1
            return None
        return self.delay()
