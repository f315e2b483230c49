"""A :class:`MemoryNetwork` whose links lose, delay, duplicate and reorder messages.

Every request and every reply goes through :meth:`FaultyNetwork._schedule`; there each
message is, by the simulation's seeded random generator, dropped (the sender's deadline
fires), delivered twice (the handler runs twice, the second reply is ignored, as a
retransmission looks to an application), and delayed by a random time (so two messages
on one link arrive in either order). Partitions, pauses and closed transports are the
base network's.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from peer_ring.core.testing._fake_clock import FakeClock
from peer_ring.core.testing._memory_network import MemoryNetwork


@dataclass(frozen=True)
class LinkFaults:
    """How messages misbehave on every link of a :class:`FaultyNetwork`.

    Attributes:
        loss: probability that a message is dropped.
        duplicate: probability that a message is delivered twice.
        min_delay: shortest one-way delay, seconds.
        max_delay: longest one-way delay, seconds (uniform in between: reordering).
    """

    loss: float = 0.0
    duplicate: float = 0.0
    min_delay: float = 0.0
    max_delay: float = 0.0

    def __post_init__(self) -> None:
        if not (0.0 <= self.loss <= 1.0 and 0.0 <= self.duplicate <= 1.0):
            raise ValueError(f"probabilities must be in [0, 1]: {self!r}")
        if not 0.0 <= self.min_delay <= self.max_delay:
            raise ValueError(f"need 0 <= min_delay <= max_delay: {self!r}")


class FaultyNetwork(MemoryNetwork):
    """An in-memory network with seeded message faults (see the module docs).

    Args:
        clock: the simulation's fake clock (delays are timers on it).
        rng: the seeded generator every fault is drawn from.
        faults: the link faults; change :attr:`faults` at any time.
    """

    def __init__(self, clock: FakeClock, rng: random.Random, faults: LinkFaults) -> None:
        super().__init__(clock)
        self.rng = rng
        self.faults = faults
        #: Messages dropped / duplicated so far.
        self.dropped = 0
        self.duplicated = 0

    def _schedule(self, callback: Callable[[], object]) -> None:
        faults, rng = self.faults, self.rng
        if faults.loss and rng.random() < faults.loss:
            self.dropped += 1
            return
        copies = 1
        if faults.duplicate and rng.random() < faults.duplicate:
            self.duplicated += 1
            copies = 2
        for _ in range(copies):
            delay = rng.uniform(faults.min_delay, faults.max_delay) if faults.max_delay else 0.0
            self.clock.call_later(delay, callback)
