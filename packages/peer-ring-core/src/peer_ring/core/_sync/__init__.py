"""Data movement driven by the core: initial sync, rebalancing, re-replication, hinted
handoff, graceful leave and anti-entropy. See ``docs/data-movement.md``.

The pure planners (:mod:`._partitions`, :mod:`._planning`, :mod:`._hints`,
:mod:`._antientropy`, :mod:`._digests`, :mod:`._leave`) decide; the I/O is split by
concept (:mod:`._detector`, :mod:`._puller`, :mod:`._handoff`, :mod:`._hinted`,
:mod:`._repair`, :mod:`._leaver`, :mod:`._commands`) behind the facade
:class:`~._manager.SyncManager` that the node calls.
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
from peer_ring.core._sync._planning import (
    ChangePlan,
    PullRequests,
    order_sources,
    plan_pull_requests,
    plan_ring_change,
)
from peer_ring.core._sync._wire import INTERNAL

__all__ = [
    "INTERNAL",
    "AntiEntropyPlanner",
    "ChangePlan",
    "Hint",
    "HintStore",
    "HoldState",
    "LeaveReport",
    "PartitionNotReadyError",
    "PartitionTable",
    "PullOutcome",
    "PullRequests",
    "RemotePartition",
    "RingChange",
    "SyncManager",
    "buckets_to_pull",
    "decide_pull",
    "differing_buckets",
    "gains_after_leave",
    "is_empty",
    "jittered",
    "order_sources",
    "partition_root",
    "plan_pull_requests",
    "plan_ring_change",
]
