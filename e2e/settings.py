"""Settings of the e2e suite, read from the environment (shared by conftest and scenarios).

* ``PEER_RING_E2E_DRIVER`` — ``local`` (default: processes on this machine) or ``kind``;
* ``PEER_RING_E2E_RING_TRIALS`` — trials of scenario 6 (default 20 locally, 5 on kind).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Sequence
from typing import Protocol

from e2e.drivers.base import ClusterDriver

DRIVER = os.environ.get("PEER_RING_E2E_DRIVER", "local").strip().lower() or "local"

#: ``serve`` flags of every local node: N=3 and quorum 2 are the defaults, made explicit.
#: Anti-entropy every 10 s instead of the default 30: the checks wait at most 150 s for
#: every key to have N current copies, and a copy that missed a write (refused while its
#: node pulled the partition, with no other node to stand in) is repaired only by
#: anti-entropy now that reads ask a quorum instead of every replica (so read repair no
#: longer reaches it). With the defaults a round compares 256 partitions, so 3 nodes each
#: replicating all 2,048 cover them in 8 rounds: 4 minutes at 30 s, 80 s at 10 s.
SERVE_ARGS = (
    "--replication", "3", "--quorum", "2", "--log-level", "info",
    "--anti-entropy-interval", "10",
)  # fmt: skip

RING_TRIALS = int(os.environ.get("PEER_RING_E2E_RING_TRIALS", "20" if DRIVER == "local" else "5"))


class DriverFactory(Protocol):
    """The ``make_driver`` fixture: ``await make_driver(capacity=5, partitions=False)``."""

    def __call__(
        self, *, capacity: int = 5, partitions: bool = False, serve_args: Sequence[str] = ()
    ) -> Awaitable[ClusterDriver]:
        """A new driver (not started), closed by the fixture at the end of the test."""
        ...
