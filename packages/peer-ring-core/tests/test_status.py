"""One mapping between typed errors and wire statuses, used by the node and the transport."""

from __future__ import annotations

import pytest

from peer_ring.core import (
    InvalidArgumentError,
    MessageTooLargeError,
    NotRunningError,
    OverloadedError,
    PeerUnavailableError,
    RemoteError,
    RequestTimeoutError,
    Status,
    UnknownCommandError,
    error_for_status,
    status_for_error,
)
from peer_ring.core.transport._codec import error_response


@pytest.mark.parametrize(
    ("error", "status", "back"),
    [
        (UnknownCommandError("x"), Status.UNKNOWN_COMMAND, UnknownCommandError),
        (InvalidArgumentError("x"), Status.INVALID_ARGUMENT, InvalidArgumentError),
        (RequestTimeoutError("x"), Status.TIMEOUT, RequestTimeoutError),
        (OverloadedError("x"), Status.OVERLOADED, OverloadedError),
        (MessageTooLargeError("x"), Status.TOO_LARGE, MessageTooLargeError),
        (PeerUnavailableError("p:1", "x"), Status.UNAVAILABLE, PeerUnavailableError),
        (NotRunningError("x"), Status.UNAVAILABLE, PeerUnavailableError),
        (RuntimeError("x"), Status.ERROR, RemoteError),
    ],
)
def test_node_and_transport_agree(error: Exception, status: Status, back: type) -> None:
    assert status_for_error(error) is status
    assert error_response(error).status is status
    assert isinstance(error_for_status(status, "x", "p:1"), back)
