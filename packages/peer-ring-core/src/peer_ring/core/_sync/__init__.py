"""Data movement driven by the core: initial sync, rebalancing, re-replication, hinted
handoff, graceful leave and anti-entropy. See ``docs/data-movement.md``.

The pure planners (:mod:`._partitions`, :mod:`._hints`, :mod:`._antientropy`,
:mod:`._digests`, :mod:`._leave`) decide; :mod:`._manager` runs the I/O.
"""

from peer_ring.core._sync._antientropy import AntiEntropyPlanner, jittered
from peer_ring.core._sync._digests import (
    HoldState,
    RemotePartition,
    buckets_to_pull,
    differing_buckets,
    is_empty,
    partition_root,
)
from peer_ring.core._sync._hints import Hint, HintStore
from peer_ring.core._sync._leave import LeaveReport, gains_after_leave
from peer_ring.core._sync._manager import SyncManager
from peer_ring.core._sync._partitions import (
    PartitionNotReadyError,
    PartitionTable,
    PullOutcome,
    RingChange,
    decide_pull,
)
from peer_ring.core._sync._wire import INTERNAL

__all__ = [
    "INTERNAL",
    "AntiEntropyPlanner",
    "Hint",
    "HintStore",
    "HoldState",
    "LeaveReport",
    "PartitionNotReadyError",
    "PartitionTable",
    "PullOutcome",
    "RemotePartition",
    "RingChange",
    "SyncManager",
    "buckets_to_pull",
    "decide_pull",
    "differing_buckets",
    "gains_after_leave",
    "is_empty",
    "jittered",
    "partition_root",
]
