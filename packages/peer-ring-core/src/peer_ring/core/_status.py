"""Mapping between wire statuses and typed errors (both directions)."""

from __future__ import annotations

from peer_ring.core._errors import (
    InvalidArgumentError,
    MessageTooLargeError,
    NotRunningError,
    OverloadedError,
    PeerRingError,
    PeerUnavailableError,
    RemoteError,
    RequestTimeoutError,
    UnknownCommandError,
)
from peer_ring.core._types import Status


def error_for_status(status: Status, message: str, peer: str) -> PeerRingError:
    """The exception a caller sees for a non-OK response from ``peer``."""
    text = f"{peer}: {message}" if message else f"{peer}: {status.name}"
    if status is Status.UNKNOWN_COMMAND:
        return UnknownCommandError(text)
    if status is Status.INVALID_ARGUMENT:
        return InvalidArgumentError(text)
    if status is Status.TIMEOUT:
        return RequestTimeoutError(text)
    if status is Status.OVERLOADED:
        return OverloadedError(text)
    if status is Status.UNAVAILABLE:
        return PeerUnavailableError(peer, message or "unavailable")
    if status is Status.TOO_LARGE:
        return MessageTooLargeError(text)
    return RemoteError(text)


#: Error class -> wire status, most specific first; anything else is ``Status.ERROR``.
#: The one mapping used by the node and by the transport, so that a handler's error keeps
#: its meaning on the wire whichever path answers it.
_STATUS_OF_ERROR: tuple[tuple[type[BaseException], Status], ...] = (
    (UnknownCommandError, Status.UNKNOWN_COMMAND),
    (InvalidArgumentError, Status.INVALID_ARGUMENT),
    (RequestTimeoutError, Status.TIMEOUT),
    (OverloadedError, Status.OVERLOADED),
    (MessageTooLargeError, Status.TOO_LARGE),
    (PeerUnavailableError, Status.UNAVAILABLE),
    (NotRunningError, Status.UNAVAILABLE),
)


def status_for_error(error: BaseException) -> Status:
    """The wire status a handler's exception is reported with."""
    for kind, status in _STATUS_OF_ERROR:
        if isinstance(error, kind):
            return status
    return Status.ERROR
