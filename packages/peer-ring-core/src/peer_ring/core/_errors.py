"""Typed errors raised by peer-ring.

Every error a caller can see derives from :class:`PeerRingError`, so an application can
catch one type. The wire carries a :class:`~peer_ring.core.Status` code; the coordinator
turns it back into one of these classes (``error_for_status``).
"""

from __future__ import annotations

from collections.abc import Mapping


class PeerRingError(Exception):
    """Base class of every error raised by peer-ring."""


class InvalidArgumentError(PeerRingError, ValueError):
    """A call was made with arguments that can never succeed (for example quorum > replication)."""


class UnknownCommandError(PeerRingError):
    """No handler is registered for the (namespace, command) pair on the node that received it."""


class MessageTooLargeError(PeerRingError):
    """A request or response is larger than the configured maximum message size."""


class PeerUnavailableError(PeerRingError):
    """The peer could not be reached (connection refused, stream broken, peer left)."""

    def __init__(self, peer: str, reason: str) -> None:
        super().__init__(f"peer {peer} is unavailable: {reason}")
        self.peer = peer
        self.reason = reason


class RequestTimeoutError(PeerRingError, TimeoutError):
    """A request did not get an answer before its deadline."""


class OverloadedError(PeerRingError):
    """Too many requests are queued for one peer; the caller should back off and retry."""


class NotRunningError(PeerRingError):
    """The node is not started, or is stopping."""


class RemoteError(PeerRingError):
    """A handler on a remote replica raised an error; its message is carried over."""


class QuorumNotReachedError(PeerRingError):
    """Fewer than ``quorum`` replicas answered successfully.

    Attributes:
        quorum: how many successful replies were needed.
        succeeded: the replicas that answered successfully.
        failures: each failed replica mapped to the error it produced.
    """

    def __init__(
        self,
        namespace: str,
        command: str,
        quorum: int,
        succeeded: list[str],
        failures: Mapping[str, BaseException],
    ) -> None:
        detail = "; ".join(f"{node}: {err}" for node, err in sorted(failures.items()))
        super().__init__(
            f"{namespace}/{command}: quorum of {quorum} not reached "
            f"({len(succeeded)} succeeded); failed replicas: {detail or 'none answered'}"
        )
        self.quorum = quorum
        self.succeeded = list(succeeded)
        self.failures = dict(failures)
