"""Dialling a peer over the TCP transport: connect, TLS, preamble, HELLO, ACCEPT.

:class:`TcpPeerConnection` is the gRPC transport's :class:`~._outbound.PeerConnection`
(queue, coalescing writer, reader, deadlines, cancellation, backpressure, reconnect with
backoff) with its stream replaced by a TCP connection: only :meth:`_open` differs.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from google.protobuf.message import DecodeError

from peer_ring.core._clock import Clock
from peer_ring.core.proto import peer_ring_pb2 as pb
from peer_ring.core.transport._base import TransportLimits
from peer_ring.core.transport._options import EOF
from peer_ring.core.transport._outbound import OutboundCall, PeerConnection, _ConnectError
from peer_ring.core.transport._tcp_wire import (
    ACCEPT,
    DIRECT_DECLINED,
    DIRECT_DONE,
    HEADROOM,
    HELLO,
    KIND_EXCHANGE,
    REFUSE,
    UNAUTHENTICATED,
    FrameProtocol,
    FrameStream,
    ProtocolError,
    decode_status,
    encode_hello,
)

logger = logging.getLogger(__name__)

#: Seconds the first connection attempt to a peer retries while the peer refuses.
FIRST_CONNECT_PATIENCE = 1.0

#: A request is written at once by its caller while fewer than this many are in flight to
#: the peer (see TcpPeerConnection): at low and moderate rates 0 or 1 are, under load many.
#: A burst to an idle peer therefore sends at most two requests alone; the rest queue for
#: the writer, which joins them into one frame.
DIRECT_BELOW = 2

_from_string = pb.Frame.FromString


class RefusedError(_ConnectError):
    """The peer answered the HELLO with REFUSE (``code`` says why)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"refused by the peer: {reason}")
        self.code = code


def tune_socket(sock: Any, limits: TransportLimits) -> None:
    """No Nagle delay, and kernel keepalive so a vanished peer is noticed in bounded time."""
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(
                socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(limits.keepalive_time))
            )
            interval = max(1, int(limits.keepalive_timeout / 3))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    except OSError:  # pragma: no cover - exotic socket types
        pass


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) -> ``(host, port)``."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class Dialer:
    """Opens authenticated connections of one kind to peers.

    Args:
        sender: this node's address (sent in HELLO).
        token: the cluster token or None.
        limits: connect timeout, message size, keepalive.
        clock: time source of the connect timeout.
        ssl_context: builds the client TLS context for a connection, or None (plain TCP).
        server_name: name checked in the peer's certificate instead of its IP.
    """

    def __init__(
        self,
        sender: str,
        token: str | None,
        limits: TransportLimits,
        clock: Clock,
        ssl_context: Callable[[], ssl.SSLContext] | None,
        server_name: str | None,
    ) -> None:
        self.sender = sender
        self._token = token
        self._limits = limits
        self._clock = clock
        self._ssl_context = ssl_context
        self._server_name = server_name

    async def dial(self, peer: str, kind: int, patience: float = 0.0) -> FrameProtocol:
        """An accepted connection to ``peer`` (raises :class:`_ConnectError`).

        A refused connection is retried for up to ``patience`` seconds (within the
        connect timeout).
        """
        task = asyncio.ensure_future(self._dial(peer, kind, patience))
        expired = False

        def on_timeout() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        timer = self._clock.call_later(self._limits.connect_timeout, on_timeout)
        try:
            return await task
        except asyncio.CancelledError:
            # The task is done here: asyncio forwards this caller's cancellation to the task
            # it awaits and resumes the caller only once that task has finished (its own
            # cleanup aborted any half-made connection), or the task had already finished.
            if task.done() and not task.cancelled() and task.exception() is None:
                # Accepted just as this caller was cancelled (close(), a transfer's caller
                # gone), before it resumed: nobody will use the connection; close it.
                task.result().abort()
            if expired:
                wait = self._limits.connect_timeout
                raise _ConnectError(f"no answer within connect_timeout={wait:g}s") from None
            raise
        finally:
            timer.cancel()

    async def _dial(self, peer: str, kind: int, patience: float) -> FrameProtocol:
        loop = asyncio.get_running_loop()
        try:
            host, port = split_address(peer)
        except ValueError:
            raise _ConnectError(f"not a host:port address: {peer!r}") from None
        ctx = self._ssl_context() if self._ssl_context is not None else None
        max_body = self._limits.max_message_bytes + HEADROOM
        give_up = loop.time() + patience
        delay = 0.01
        while True:
            try:
                transport, proto = await loop.create_connection(
                    lambda: FrameProtocol(max_body),
                    host,
                    port,
                    ssl=ctx,
                    server_hostname=(self._server_name or host) if ctx is not None else None,
                )
                break
            except ConnectionRefusedError as exc:
                # A peer that is just starting (nodes of a cluster start at about the same
                # time) refuses for a moment; gRPC channels wait for it too.
                if loop.time() + delay > give_up:
                    raise _ConnectError(f"cannot connect: {exc}") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.1)
            except (OSError, ssl.SSLError) as exc:
                raise _ConnectError(f"cannot connect: {exc}") from None
        tune_socket(transport.get_extra_info("socket"), self._limits)
        try:
            await proto.send(HELLO, encode_hello(kind, self.sender, self._token))
            item = await proto.read()
        except ProtocolError as exc:
            proto.abort()
            raise _ConnectError(f"handshake failed: {exc}") from None
        except (OSError, ssl.SSLError) as exc:
            proto.abort()
            raise _ConnectError(f"handshake failed: {exc}") from None
        except BaseException:
            proto.abort()
            raise
        if item is EOF:
            proto.abort()
            raise _ConnectError(
                "the peer closed the connection during the handshake (a node running "
                "transport='grpc', or TLS settings that differ? all nodes must agree)"
            )
        assert isinstance(item, tuple)
        code, body = item
        if code == ACCEPT:
            return proto
        proto.abort()
        if code == REFUSE:
            status, reason = decode_status(body)
            if status == UNAUTHENTICATED:
                logger.warning("peer %s refused this node: %s", peer, reason)
            raise RefusedError(status, reason)
        raise _ConnectError(f"handshake failed: unexpected message type {code}")


class _NoChannel:
    """Stands in for the gRPC channel :class:`PeerConnection` closes on shutdown."""

    async def close(self, grace: float | None = None) -> None:
        return None


class TcpPeerConnection(PeerConnection):
    """This node's connection to one peer over TCP (see the module docstring).

    Fewer loop turns than the gRPC link, where that costs no coalescing:

    - a request made while the writer is idle, nothing is queued and fewer than
      :data:`DIRECT_BELOW` requests are in flight is written by :meth:`submit` itself (no
      writer wake-up, no linger turn); once that many are in flight the next requests
      queue for the writer, which joins them into one frame as before, and under load
      (many in flight) every request does, as do the requests of the turn after a frame of
      several answers (their callers, woken together, would otherwise find nothing in
      flight and send the first ones alone). A direct write schedules nothing: no
      callback, so no extra loop iteration (until round 10 a ``call_soon`` per direct
      request ended a "one direct request per turn" rule; closed-loop frames per
      operation were the same without it, docs/benchmarks.md);
    - answers are matched in the protocol's ``data_received`` while the reader task is
      idle (:meth:`_take_frame`), in the turn they arrive.
    """

    def __init__(self, peer: str, dialer: Dialer, **kwargs: Any) -> None:
        super().__init__(peer, _NoChannel(), **kwargs)  # type: ignore[arg-type]
        self._dialer = dialer
        self._first_attempt = True
        # Never past the in-flight bound (submit() checks only this).
        self._direct_below = min(DIRECT_BELOW, self._max_in_flight)
        self._frames: FrameStream | None = None
        #: A frame of several answers was matched in this or the previous loop turn.
        self._burst = False

    async def _open(self) -> Any:
        # Only the first attempt waits for a peer that is still starting: later ones run
        # while requests fail fast (DOWN), and the reconnect backoff paces them.
        patience = min(self._limits.connect_timeout, FIRST_CONNECT_PATIENCE)
        if not self._first_attempt:
            patience = 0.0
        self._first_attempt = False
        proto = await self._dialer.dial(self.peer, KIND_EXCHANGE, patience)
        stream = FrameStream(proto, self.peer)
        stream.take_frames(self._take_frame)
        self._frames = stream
        return stream

    def _send_now(self, call: OutboundCall) -> bool:
        stream = self._frames
        if self._burst or stream is None or not stream.write_now([call.data]):
            return False
        call.data = b""
        call.sent = True
        self._in_flight += 1
        stats = self._stats
        stats.requests_sent += 1
        stats.frames_sent += 1
        stats.direct_frames += 1
        stats.direct_requests += 1
        if self._sample is None:
            self._sample = call
            self._sample_at = self._loop.time()
        return True

    def _take_frame(self, body: bytes) -> int:
        """Match the answers of a frame in the turn it arrived (see the class docstring)."""
        try:
            frame = _from_string(body)
        except DecodeError:
            return DIRECT_DECLINED  # the reader task parses it again and ends the stream
        self._stats.frames_received += 1
        responses = frame.responses
        if responses:
            if len(responses) > 1 and not self._burst:
                # Answers to several requests at once: their callers' next requests come in
                # the next turn, together (closed loop). None of them goes out on its own:
                # the writer joins them all.
                self._burst = True
                self._loop.call_soon(self._loop.call_soon, self._end_burst)
            self._on_responses(responses)
        return DIRECT_DONE

    def _end_burst(self) -> None:
        self._burst = False
