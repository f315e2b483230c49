"""The serving side of the gRPC ``Transfer`` RPC: a peer's bulk partition pull.

:class:`~._grpc.GrpcTransport` admits the call (token, sender, identity, the
``max_inbound_transfers`` bound) and hands it to :func:`serve_transfer`, which streams
what the node's transfer handler exports, chunked to the message size limit. A failure of
the handler ends the call with a status the puller maps back to the error (see
:func:`._grpc_errors.transfer_error`); it never breaks the server.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from peer_ring.core._errors import InvalidArgumentError, PeerRingError, UnknownCommandError
from peer_ring.core.transport._base import TransferHandler
from peer_ring.core.transport._codec import (
    RecordTooLargeError,
    decode_transfer_request,
    transfer_chunks,
)
from peer_ring.core.transport._grpc_errors import abort
from peer_ring.core.transport._log import RateLimitedLog
from peer_ring.core.transport._stats import TransportStats

logger = logging.getLogger(__name__)


async def serve_transfer(
    on_transfer: TransferHandler,
    sender: str,
    data: bytes,
    context: grpc.aio.ServicerContext[bytes, bytes],
    max_bytes: int,
    stats: TransportStats,
    log: RateLimitedLog,
) -> None:
    """Stream to ``sender`` the records ``on_transfer`` exports for the request in ``data``.

    Args:
        on_transfer: the node's transfer handler.
        sender: the admitted peer's address.
        data: the serialized ``TransferRequest``.
        context: the call's servicer context.
        max_bytes: the largest chunk (``max_message_bytes``).
        stats: the transport's counters.
        log: where a malformed request is reported (rate-limited).
    """
    try:
        request = decode_transfer_request(data)
    except DecodeError as exc:
        stats.malformed_frames += 1
        log.warning("malformed transfer", "malformed Transfer request from %s: %s", sender, exc)
        await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {exc}")
    stats.transfers_sent += 1
    failure: tuple[grpc.StatusCode, str] | None = None
    chunks = on_transfer(sender, request)
    try:
        async for records in chunks:
            for chunk in transfer_chunks(records, max_bytes):
                await context.write(chunk)
    except RecordTooLargeError as exc:
        failure = (grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
    except UnknownCommandError as exc:
        failure = (grpc.StatusCode.UNIMPLEMENTED, str(exc))
    except InvalidArgumentError as exc:
        failure = (grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    except Exception as exc:
        if not isinstance(exc, PeerRingError):
            logger.warning("transfer %s to %s failed", request, sender, exc_info=exc)
        failure = (grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
    finally:
        if isinstance(chunks, AsyncGenerator):
            with contextlib.suppress(Exception):
                await chunks.aclose()
    if failure is not None:
        await abort(context, *failure)
