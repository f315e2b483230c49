"""A deterministic simulator: a whole cluster in one process, every fault from a seed.

Nodes run over a :class:`FaultyNetwork` (loss, duplication, delay and reordering on every
link, plus the in-memory network's partitions), each with its own :class:`SkewedClock`;
a :class:`Simulation` owns the seed, the fake time line and a nemesis that crashes and
restarts nodes with empty memory and isolates them. The same seed replays the same run.
Applications bring their workload and checker (``peer_ring.kv.sim`` is the KV store's)::

    sim = Simulation(seed=42)
    stores = {}

    async def main() -> None:
        ...  # start one node per sim.addresses on sim.transport(a), sim.node_clock(a)
        await asyncio.gather(workload(), sim.nemesis(crash, restart, until=20.0))

    sim.run(main())

:func:`shrink` reduces a failing configuration to the fewest fault kinds that still fail.
"""

from peer_ring.core.testing.sim._clock import SkewedClock
from peer_ring.core.testing.sim._network import FaultyNetwork, LinkFaults
from peer_ring.core.testing.sim._shrink import shrink
from peer_ring.core.testing.sim._simulation import NodeAction, SimConfig, Simulation

__all__ = [
    "FaultyNetwork",
    "LinkFaults",
    "NodeAction",
    "SimConfig",
    "Simulation",
    "SkewedClock",
    "shrink",
]
