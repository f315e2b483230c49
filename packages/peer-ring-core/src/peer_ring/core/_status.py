"""Mapping between wire statuses and typed errors (both directions)."""

from __future__ import annotations

from peer_ring.core._errors import (
    InvalidArgumentError,
    MessageTooLargeError,
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


def status_for_error(error: BaseException) -> Status:
    """The wire status a handler's exception is reported with."""
    if isinstance(error, UnknownCommandError):
        return Status.UNKNOWN_COMMAND
    if isinstance(error, InvalidArgumentError):
        return Status.INVALID_ARGUMENT
    if isinstance(error, RequestTimeoutError):
        return Status.TIMEOUT
    if isinstance(error, OverloadedError):
        return Status.OVERLOADED
    if isinstance(error, MessageTooLargeError):
        return Status.TOO_LARGE
    if isinstance(error, PeerUnavailableError):
        return Status.UNAVAILABLE
    return Status.ERROR
