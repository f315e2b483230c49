"""Test support: a deterministic simulator of many gossip nodes on virtual time.

``Simulation`` runs the pure protocol of every node on one event heap and a
:class:`SimNetwork` with packet loss, delay and partitions; tests and benchmarks measure
detection times, false suspicions and traffic on it without sleeping::

    sim = Simulation(seed=1)
    sim.add_cluster(100)
    sim.kill(Simulation.name_of(7))
    sim.run_for(30.0)
"""

from peer_ring.discovery.gossip.testing._network import SimNetwork
from peer_ring.discovery.gossip.testing._simulation import SimEvent, SimNode, Simulation

__all__ = ["SimEvent", "SimNetwork", "SimNode", "Simulation"]
