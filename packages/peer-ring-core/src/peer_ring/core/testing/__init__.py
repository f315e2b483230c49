"""Test support that other packages reuse: a fake clock and an in-memory network.

A whole cluster runs in one process and one event loop; on a
:class:`FakeClockEventLoop` the fake clock is the loop's time and jumps to the next timer
whenever nothing is runnable, so waits of minutes take no real time::

    clock = FakeClock()
    net = MemoryNetwork(clock)
    nodes = [PeerRing(StaticDiscovery(peers, self_address=a), transport=net.transport(a),
                      clock=clock) for a in peers]
"""

from peer_ring.core.testing._fake_clock import FakeClock, settle_loop
from peer_ring.core.testing._loop import FakeClockEventLoop, current_clock, run, run_until_idle
from peer_ring.core.testing._memory_network import MemoryNetwork, MemoryTransport
from peer_ring.core.testing._ports import free_port
from peer_ring.core.testing._static import FixedDiscovery

__all__ = [
    "FakeClock",
    "FakeClockEventLoop",
    "FixedDiscovery",
    "MemoryNetwork",
    "MemoryTransport",
    "current_clock",
    "free_port",
    "run",
    "run_until_idle",
    "settle_loop",
]
