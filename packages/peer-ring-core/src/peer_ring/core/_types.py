"""Plain value types shared by every layer: members, requests, responses, statuses."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from types import MappingProxyType


def _empty() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Member:
    """One node of the cluster.

    Attributes:
        address: ``host:port`` of the node's peer (gRPC) listener. It is the node's identity:
            two members are the same node exactly when their addresses are equal.
        metadata: free-form labels from discovery (for example ``zone``); not part of identity.
    """

    address: str
    metadata: Mapping[str, str] = field(default_factory=_empty, compare=False, hash=False)


class Status(IntEnum):
    """Outcome of one request, as carried on the wire (``peer_ring.v1.Status``)."""

    OK = 0
    ERROR = 1
    UNKNOWN_COMMAND = 2
    INVALID_ARGUMENT = 3
    TIMEOUT = 4
    OVERLOADED = 5
    UNAVAILABLE = 6
    TOO_LARGE = 7


@dataclass(slots=True)
class Request:
    """One operation sent to a peer.

    Attributes:
        namespace: the application namespace (``"kv"``, ``"ratelimit"``...).
        command: the command inside the namespace (``"get"``, ``"set"``...).
        key: the key the command applies to (may be empty for node-level commands).
        payload: opaque application bytes; peer-ring never looks inside.
        partition: the partition of ``key`` as computed by the sender.
        hint: for sloppy-quorum writes, the address of the replica this write is meant for
            (empty when the receiver is itself a preferred replica).
        timeout: seconds the sender will wait; the receiver may drop work past it.
    """

    namespace: str
    command: str
    key: bytes = b""
    payload: bytes = b""
    partition: int = 0
    hint: str = ""
    timeout: float = 0.0


@dataclass(slots=True)
class Response:
    """The answer to one :class:`Request`."""

    status: Status = Status.OK
    payload: bytes = b""
    error: str = ""


@dataclass(frozen=True, slots=True)
class TransferRequest:
    """A request for the records of one partition (bulk, server-streaming).

    Attributes:
        namespace: whose records.
        partition: which partition.
        buckets: restrict to these digest buckets (anti-entropy); empty means all records.
    """

    namespace: str
    partition: int
    buckets: tuple[int, ...] = ()
