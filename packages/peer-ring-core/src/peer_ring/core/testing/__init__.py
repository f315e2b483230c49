"""Test support that other packages reuse: a fake clock and an in-memory network.

A whole cluster runs in one process and one event loop::

    clock = FakeClock()
    net = MemoryNetwork(clock)
    nodes = [PeerRing(StaticDiscovery(peers, self_address=a), transport=net.transport(a),
                      clock=clock) for a in peers]
"""

from peer_ring.core.testing._fake_clock import FakeClock, settle_loop
from peer_ring.core.testing._memory_network import MemoryNetwork, MemoryTransport
from peer_ring.core.testing._ports import free_port
from peer_ring.core.testing._static import FixedDiscovery

__all__ = [
    "FakeClock",
    "FixedDiscovery",
    "MemoryNetwork",
    "MemoryTransport",
    "free_port",
    "settle_loop",
]
