"""TCP transport: the status codes of transfer ends and refusals, both ways.

A serving node turns what went wrong while exporting a partition into an ``END`` status
(:func:`send_chunks`); the fetching node turns a non-OK status back into the typed error
the gRPC transport would raise for the same failure (:func:`status_error`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator

from peer_ring.core._errors import (
    InvalidArgumentError,
    MessageTooLargeError,
    OverloadedError,
    PeerRingError,
    PeerUnavailableError,
    RemoteError,
    UnknownCommandError,
)
from peer_ring.core._types import TransferRequest
from peer_ring.core.transport._codec import RecordTooLargeError, transfer_chunks
from peer_ring.core.transport._tcp_wire import (
    CHUNK,
    INTERNAL,
    INVALID,
    OK,
    OVERLOADED,
    TOO_LARGE,
    UNKNOWN_COMMAND,
    FrameProtocol,
)

logger = logging.getLogger(__name__)


async def send_chunks(
    proto: FrameProtocol,
    chunks: AsyncIterator[list[bytes]],
    max_message_bytes: int,
    sender: str,
    request: TransferRequest,
) -> tuple[int, str]:
    """Send an export's records as ``CHUNK`` messages; the ``END`` status to send after."""
    try:
        async for records in chunks:
            for chunk in transfer_chunks(records, max_message_bytes):
                await proto.send(CHUNK, chunk)
    except RecordTooLargeError as exc:
        return TOO_LARGE, str(exc)
    except UnknownCommandError as exc:
        return UNKNOWN_COMMAND, str(exc)
    except InvalidArgumentError as exc:
        return INVALID, str(exc)
    except OSError:
        raise
    except Exception as exc:
        if not isinstance(exc, PeerRingError):
            logger.warning("transfer %s to %s failed", request, sender, exc_info=exc)
        return INTERNAL, f"{type(exc).__name__}: {exc}"
    finally:
        if isinstance(chunks, AsyncGenerator):
            with contextlib.suppress(Exception):
                await chunks.aclose()
    return OK, ""


def status_error(code: int, message: str, peer: str) -> PeerRingError:
    """The typed error of a non-OK transfer or refusal status from ``peer``."""
    if code == OVERLOADED:
        return OverloadedError(message)
    if code == TOO_LARGE:
        return MessageTooLargeError(message)
    if code == UNKNOWN_COMMAND:
        return UnknownCommandError(message)
    if code == INVALID:
        return InvalidArgumentError(message)
    if code == INTERNAL:
        return RemoteError(message)
    return PeerUnavailableError(peer, message)
