"""Test support that other packages reuse: a fake clock and an in-memory network.

A whole cluster runs in one process and one event loop; on a
:class:`FakeClockEventLoop` the fake clock is the loop's time and jumps to the next timer
whenever nothing is runnable, so waits of minutes take no real time::

    clock = FakeClock()
    net = MemoryNetwork(clock)
    nodes = [PeerRing(StaticDiscovery(peers, self_address=a), transport=net.transport(a),
                      clock=clock) for a in peers]

For mutual-TLS tests, :class:`CertificateAuthority` issues node certificates and
:class:`TLSFiles` writes (and rotates) a node's files; they need ``cryptography``
(``pip install 'peer-ring-core[testing]'``) and are imported only when first used.
"""

from typing import TYPE_CHECKING, Any

from peer_ring.core.testing._fake_clock import FakeClock, settle_loop
from peer_ring.core.testing._loop import FakeClockEventLoop, current_clock, run, run_until_idle
from peer_ring.core.testing._memory_cluster import MemoryCluster, fake_time_config
from peer_ring.core.testing._memory_network import MemoryNetwork, MemoryTransport
from peer_ring.core.testing._ports import free_port, free_port_block
from peer_ring.core.testing._static import FixedDiscovery
from peer_ring.core.testing._versioned_dict import VersionedDict, versioned_payload

if TYPE_CHECKING:
    from peer_ring.core.testing._certs import (
        CertificateAuthority,
        IssuedCertificate,
        TLSFiles,
        write_file_atomically,
    )

#: Names of ``_certs``, which imports the optional ``cryptography`` package: loaded lazily.
_CERTS = frozenset(
    {"CertificateAuthority", "IssuedCertificate", "TLSFiles", "write_file_atomically"}
)


def __getattr__(name: str) -> Any:
    if name in _CERTS:
        from peer_ring.core.testing import _certs

        return getattr(_certs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CertificateAuthority",
    "FakeClock",
    "FakeClockEventLoop",
    "FixedDiscovery",
    "IssuedCertificate",
    "MemoryCluster",
    "MemoryNetwork",
    "MemoryTransport",
    "TLSFiles",
    "VersionedDict",
    "current_clock",
    "fake_time_config",
    "free_port",
    "free_port_block",
    "run",
    "run_until_idle",
    "settle_loop",
    "versioned_payload",
    "write_file_atomically",
]
