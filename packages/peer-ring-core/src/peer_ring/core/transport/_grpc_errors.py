"""How the gRPC transport words its refusals and maps gRPC failures to typed errors."""

from __future__ import annotations

import errno
import socket
from typing import Any, NoReturn

import grpc
import grpc.aio

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

#: Start of the details of a refusal for capacity; lets the caller tell it apart from
#: gRPC's own RESOURCE_EXHAUSTED (a message over the size limit).
OVERLOADED_DETAILS = "overloaded:"

#: Longest status message sent back: details may quote the caller's input (a namespace),
#: and gRPC clients refuse trailers over 8 KiB by default, hiding the real status.
MAX_DETAILS_CHARS = 1024


def clip(text: str, limit: int = MAX_DETAILS_CHARS) -> str:
    """``text``, shortened to ``limit`` characters with a marker when it is longer."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 40]}... ({len(text) - limit + 40} more characters)"


async def abort(
    context: grpc.aio.ServicerContext[Any, Any], code: grpc.StatusCode, details: str
) -> NoReturn:
    await context.abort(code, clip(details))
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


def transfer_error(peer: str, exc: grpc.aio.AioRpcError) -> PeerRingError:
    code = exc.code()
    details = exc.details() or code.name
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return RequestTimeoutError(f"transfer from {peer}: {details}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        if details.startswith(OVERLOADED_DETAILS):
            return OverloadedError(f"transfer from {peer}: {details}")
        return MessageTooLargeError(f"transfer from {peer}: {details}")
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return UnknownCommandError(f"transfer from {peer}: {details}")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgumentError(f"transfer from {peer}: {details}")
    if code == grpc.StatusCode.INTERNAL:
        return RemoteError(f"transfer from {peer} failed: {details}")
    return PeerUnavailableError(peer, f"{code.name}: {details}")


def bind_error(address: str, detail: str) -> OSError:
    """Turn gRPC's bind failure (a RuntimeError without errno) into a precise OSError."""
    host, _, port = address.rpartition(":")
    code = errno.EADDRINUSE
    try:
        family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host.strip("[]"), int(port)))
    except OSError as exc:
        code = exc.errno or code
    except ValueError:
        code = errno.EINVAL
    return OSError(code, f"cannot listen on {address}: {detail}")
