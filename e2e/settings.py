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
#: Anti-entropy runs at its default interval (30 s): a copy that missed a write because its
#: node refused it while pulling the partition (with no other node to stand in) is compared
#: with the other replicas right after that pull, so the checks' 150 s wait for N current
#: copies does not depend on anti-entropy visiting every partition (8 rounds, 4 minutes).
SERVE_ARGS = ("--replication", "3", "--quorum", "2", "--log-level", "info")

RING_TRIALS = int(os.environ.get("PEER_RING_E2E_RING_TRIALS", "20" if DRIVER == "local" else "5"))


class DriverFactory(Protocol):
    """The ``make_driver`` fixture: ``await make_driver(capacity=5, partitions=False)``."""

    def __call__(
        self, *, capacity: int = 5, partitions: bool = False, serve_args: Sequence[str] = ()
    ) -> Awaitable[ClusterDriver]:
        """A new driver (not started), closed by the fixture at the end of the test."""
        ...
