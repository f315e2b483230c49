"""Anti-entropy planning (Dynamo §4.7): which partitions to compare with whom, per round.

Hinted handoff and read repair fix most divergence as it happens; anti-entropy is the
background safety net for what they miss (a replica that was cut off while writes went
elsewhere, a hint dropped after its TTL, a node that restarted). Each round a node takes
the next ``batch`` partitions it replicates (a cursor walks them all, so work per round is
bounded and every partition is visited in ``P / batch`` rounds), and for each picks one
other replica — rotating, so that over rounds it meets all of them. It compares partition
roots and bucket digests with that replica and pulls the buckets that differ. Both sides
run the loop, so both converge; tombstones are records, so deletes win over older values
and never resurrect.

Pure: the manager runs the I/O.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection

from peer_ring.core._ring import Ring


class AntiEntropyPlanner:
    """Chooses the partitions and peers of successive anti-entropy rounds.

    Args:
        me: this node's address.
        batch: most partitions compared per round.
    """

    def __init__(self, me: str, batch: int) -> None:
        self._me = me
        self._batch = batch
        self._cursor = 0
        self._round = 0

    @property
    def rounds_planned(self) -> int:
        """How many rounds were planned so far."""
        return self._round

    def next_round(
        self,
        ring: Ring,
        replication: int,
        eligible: Callable[[int], bool],
        unavailable: Collection[str],
    ) -> dict[str, list[int]]:
        """The next round: peer -> partitions to compare with it.

        Args:
            ring: the current ring.
            replication: the replication N the node keeps.
            eligible: whether a partition may be compared now (synced, not pending).
            unavailable: peers to skip (suspected, down).
        """
        mine = sorted(ring.partitions_of(self._me, replication))
        self._round += 1
        if not mine:
            return {}
        start = next((i for i, p in enumerate(mine) if p >= self._cursor), 0)
        plan: dict[str, list[int]] = {}
        taken = 0
        for i in range(len(mine)):
            if taken >= self._batch:
                break
            p = mine[(start + i) % len(mine)]
            self._cursor = p + 1
            if not eligible(p):
                continue
            others = [
                n
                for n in ring.preference_list(p, replication)
                if n != self._me and n not in unavailable
            ]
            if not others:
                continue
            peer = others[(self._round + p) % len(others)]
            plan.setdefault(peer, []).append(p)
            taken += 1
        return plan


def jittered(interval: float, rng: random.Random) -> float:
    """``interval`` +-20%, so that nodes started together do not compare in lockstep."""
    return interval * (0.8 + 0.4 * rng.random())
