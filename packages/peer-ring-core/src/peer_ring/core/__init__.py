"""peer-ring core: consistent hashing, membership, transport and the quorum coordinator.

The public API is re-exported here; everything in ``_``-prefixed modules is private.
"""

from peer_ring.core.__about__ import __version__
from peer_ring.core._clock import Clock, SystemClock, TimerHandle
from peer_ring.core._command import Command, Handler
from peer_ring.core._config import PeerRingConfig, check_replication
from peer_ring.core._discovery import Discovery
from peer_ring.core._errors import (
    InvalidArgumentError,
    MessageTooLargeError,
    NotRunningError,
    OverloadedError,
    PeerRingError,
    PeerUnavailableError,
    QuorumNotReachedError,
    RemoteError,
    RequestTimeoutError,
    UnknownCommandError,
)
from peer_ring.core._hashing import bucket_for_key, fingerprint64, partition_for_key
from peer_ring.core._hooks import DIGEST_BUCKETS, DataHooks, VersionedDataHooks
from peer_ring.core._membership import Membership
from peer_ring.core._node import PeerRing
from peer_ring.core._ownership import OwnershipChange, OwnershipListener
from peer_ring.core._result import CommandContext, ExecuteResult, Reply
from peer_ring.core._ring import DEFAULT_PARTITIONS, Ring
from peer_ring.core._runner import run, uvloop_available
from peer_ring.core._status import error_for_status, status_for_error
from peer_ring.core._sync import LeaveReport, PartitionNotReadyError
from peer_ring.core._types import Member, Request, Response, Status, TransferRequest
from peer_ring.core.transport import TLSConfig, Transport, TransportLimits

__all__ = [
    "DEFAULT_PARTITIONS",
    "DIGEST_BUCKETS",
    "Clock",
    "Command",
    "CommandContext",
    "DataHooks",
    "Discovery",
    "ExecuteResult",
    "Handler",
    "InvalidArgumentError",
    "LeaveReport",
    "Member",
    "Membership",
    "MessageTooLargeError",
    "NotRunningError",
    "OverloadedError",
    "OwnershipChange",
    "OwnershipListener",
    "PartitionNotReadyError",
    "PeerRing",
    "PeerRingConfig",
    "PeerRingError",
    "PeerUnavailableError",
    "QuorumNotReachedError",
    "RemoteError",
    "Reply",
    "Request",
    "RequestTimeoutError",
    "Response",
    "Ring",
    "Status",
    "SystemClock",
    "TLSConfig",
    "TimerHandle",
    "TransferRequest",
    "Transport",
    "TransportLimits",
    "UnknownCommandError",
    "VersionedDataHooks",
    "__version__",
    "bucket_for_key",
    "check_replication",
    "error_for_status",
    "fingerprint64",
    "partition_for_key",
    "run",
    "status_for_error",
    "uvloop_available",
]
