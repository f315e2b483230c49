"""Wire format of the TCP transport, and the asyncio.Protocol that reads it.

A connection starts with an 8-byte preamble from each side (:data:`PREAMBLE`: ``PRTCP``,
the protocol version, the transport kind), then carries *messages*::

    uint32 length (big-endian, of type + body) | uint8 type | body

The dialling side sends ``HELLO`` (connection kind, sender address, token); the accepting
side answers ``ACCEPT`` or ``REFUSE`` (a code and a reason) and closes on refusal. An
``EXCHANGE`` connection then carries ``FRAME`` messages whose body is a ``peer_ring.v1.Frame``
built by :mod:`._codec` exactly as on the gRPC transport. A ``TRANSFER`` connection carries
one ``TRANSFER_REQ``, answered by ``CHUNK`` messages (``TransferChunk``) and one ``END``.

The preamble makes a peer of the other kind fail loudly: a gRPC client opens with the
HTTP/2 preface ``PRI * HTTP/2.0``, a TLS client with a handshake record; both are named
in the refusal logged by the accepting node.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import Callable
from typing import cast

from peer_ring.core.transport._inbound import CARRY
from peer_ring.core.transport._options import EOF

logger = logging.getLogger(__name__)

VERSION = 1
MAGIC = b"PRTCP"
#: ``PRTCP``, version, kind byte (``T``: this TCP transport), newline.
PREAMBLE = MAGIC + bytes((VERSION,)) + b"T\n"

# Message types.
HELLO = 1
ACCEPT = 2
REFUSE = 3
FRAME = 4
TRANSFER_REQ = 5
CHUNK = 6
END = 7

# Connection kinds (HELLO).
KIND_EXCHANGE = 1
KIND_TRANSFER = 2

# REFUSE codes and END codes.
OK = 0
UNAUTHENTICATED = 1
INVALID = 2
OVERLOADED = 3
STOPPING = 4
UNKNOWN_COMMAND = 5
TOO_LARGE = 6
INTERNAL = 7

#: Bytes a message may exceed ``max_message_bytes`` by (type, framing of the parts).
HEADROOM = 1024

_HEAD = struct.Struct(">IB")
#: Unread received bytes of one connection beyond which it stops reading the socket.
READ_HIGH_WATER = 4 * 1024 * 1024

# What a direct consumer (FrameProtocol.on_frame) did with a FRAME body.
#: Consumed in full.
DIRECT_DONE = 0
#: Not consumed: the body is queued for the reader task (which reports a bad frame).
DIRECT_DECLINED = 1
#: Consumed in part: the consumer stopped at a bound and keeps the rest; the reader task
#: gets :data:`~._inbound.CARRY` in the body's place and goes on after waiting for room.
DIRECT_BLOCKED = 2
#: The queued item standing for a frame's rest kept by the consumer (not a wire type: those
#: are a byte).
_CARRY_KIND = -1


class ProtocolError(Exception):
    """The other side broke the wire format (the message says how)."""


def message(kind: int, body: bytes = b"") -> bytes:
    """One message: length, type and body."""
    return _HEAD.pack(len(body) + 1, kind) + body


def encode_hello(kind: int, sender: str, token: str | None) -> bytes:
    """Body of a ``HELLO``."""
    raw_sender = sender.encode()
    raw_token = (token or "").encode()
    return (
        bytes((kind,))
        + struct.pack(">H", len(raw_sender))
        + raw_sender
        + struct.pack(">H", len(raw_token))
        + raw_token
    )


def decode_hello(body: bytes) -> tuple[int, str, bytes]:
    """``(kind, sender, token bytes)`` of a ``HELLO`` (raises :class:`ProtocolError`)."""
    try:
        kind = body[0]
        (n,) = struct.unpack_from(">H", body, 1)
        sender = body[3 : 3 + n].decode()
        (m,) = struct.unpack_from(">H", body, 3 + n)
        token = body[5 + n : 5 + n + m]
    except (IndexError, struct.error, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed HELLO: {exc}") from None
    if len(body) != 5 + n + m or len(token) != m:
        raise ProtocolError("malformed HELLO: wrong length")
    return kind, sender, token


def encode_status(code: int, reason: str) -> bytes:
    """Body of a ``REFUSE`` or ``END``."""
    return bytes((code,)) + reason.encode()[:2048]


def decode_status(body: bytes) -> tuple[int, str]:
    """``(code, reason)`` of a ``REFUSE`` or ``END``."""
    if not body:
        return INTERNAL, "empty status"
    return body[0], body[1:].decode("utf-8", "replace")


def describe_preamble(data: bytes) -> str:
    """Why ``data`` is not this transport's preamble, in words an operator can act on."""
    # A gRPC client opens with the HTTP/2 preface; a gRPC server with a SETTINGS frame
    # (3-byte length, type 4).
    if data.startswith(b"PRI * HT") or (len(data) >= 4 and data[0] == 0 and data[3] == 4):
        return (
            "the peer speaks HTTP/2 (a node running transport='grpc'?); all nodes of a "
            "cluster must use the same transport"
        )
    if data[:1] == b"\x16":
        return "the peer started a TLS handshake, but this node does not use TLS"
    if data.startswith(MAGIC):
        if data[6:7] != b"T":
            return f"the peer's transport kind is {data[6:7]!r}, this node's is b'T'"
        return f"the peer speaks TCP transport protocol version {data[5]}, this node {VERSION}"
    return f"not a peer-ring TCP transport peer (it sent {data[:8]!r})"


class FrameProtocol(asyncio.Protocol):
    """Splits the byte stream into messages; exposes them as awaitable reads.

    ``read()`` returns ``(type, body)`` or :data:`EOF` when the connection ended cleanly;
    it raises :class:`ProtocolError` or ``ConnectionError`` otherwise. Writes are
    buffered by the transport; ``write()`` waits while the kernel buffer is full.
    """

    def __init__(self, max_body: int, on_made: Callable[[FrameProtocol], None] | None = None):
        self._max_body = max_body
        self._on_made = on_made
        self._buf = bytearray()
        self._preamble_ok = False
        self._messages: deque[tuple[int, bytes]] = deque()
        self._queued_bytes = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._eof = False
        self._paused_reading = False
        self._drain: asyncio.Future[None] | None = None
        self._write_paused = False
        self.transport: asyncio.Transport | None = None
        self.peername = "?"
        #: Called once when the connection is lost (a transfer's export is then cancelled).
        self.on_lost: Callable[[], None] | None = None
        #: Takes ``FRAME`` bodies in :meth:`data_received` itself while the reader task
        #: waits in :meth:`read` with nothing queued (returns a ``DIRECT_*`` code): the
        #: frame is served in the loop turn that read it, not in the reader task's next
        #: one. Anything queued is read first, so the order of the messages is kept.
        self.on_frame: Callable[[bytes], int] | None = None

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peername = f"{peer[0]}:{peer[1]}"
        self.transport.write(PREAMBLE)
        if self._on_made is not None:
            self._on_made(self)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        end = len(buf)
        if not self._preamble_ok:
            if end < len(PREAMBLE):
                if not PREAMBLE.startswith(bytes(buf[: len(PREAMBLE)])):
                    self._fail(ProtocolError(describe_preamble(bytes(buf))))
                return
            head = bytes(buf[: len(PREAMBLE)])
            if head != PREAMBLE:
                self._fail(ProtocolError(describe_preamble(head)))
                return
            self._preamble_ok = True
            pos = len(PREAMBLE)
        unpack = _HEAD.unpack_from
        messages = self._messages
        items: list[tuple[int, bytes]] = []
        bad: Exception | None = None
        while end - pos >= 5:
            length, kind = unpack(buf, pos)
            if length == 0 or length - 1 > self._max_body:
                # Fails the connection once what came before is delivered.
                bad = ProtocolError(
                    f"message of {length} bytes announced, over the limit of "
                    f"{self._max_body + 1} (max_message_bytes)"
                )
                break
            if end - pos - 4 < length:
                break
            items.append((kind, bytes(buf[pos + 5 : pos + 4 + length])))
            pos += 4 + length
        if pos:
            del buf[:pos]
        # Split before delivering: a consumer may abort the connection (clearing buf).
        on_frame = self.on_frame
        added = 0
        for kind, body in items:
            if (
                on_frame is not None
                and kind == FRAME
                and not messages
                and self._waiter is not None
                and self._error is None
                and not self._eof
            ):
                try:
                    done = on_frame(body)
                except Exception as exc:  # a bug below: end this connection, not the loop
                    logger.exception("serving a frame from %s failed", self.peername)
                    bad = exc
                    break
                if done == DIRECT_DONE:
                    continue
                if done == DIRECT_BLOCKED:
                    messages.append((_CARRY_KIND, b""))
                    added += 1
                    continue
            messages.append((kind, body))
            added += len(body) + 1
        if bad is not None:
            self._queued_bytes += added
            self._fail(bad)
            return
        if added:
            self._queued_bytes += added
            if self._queued_bytes > READ_HIGH_WATER and not self._paused_reading:
                self._paused_reading = True
                assert self.transport is not None
                self.transport.pause_reading()
            self._wake()

    def eof_received(self) -> bool | None:
        self._eof = True
        self._wake()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._error is None:
            self._error = exc if exc is not None else None
        self._eof = True
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        on_lost, self.on_lost = self.on_lost, None
        if on_lost is not None:
            on_lost()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # -- API ---------------------------------------------------------------------------

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self._buf.clear()
        if self.transport is not None:
            self.transport.abort()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read(self) -> tuple[int, bytes] | object:
        """The next message, or :data:`EOF`."""
        while True:
            if self._messages:
                item = self._messages.popleft()
                self._queued_bytes -= len(item[1]) + 1
                if self._paused_reading and self._queued_bytes < READ_HIGH_WATER // 2:
                    self._paused_reading = False
                    if self.transport is not None:
                        self.transport.resume_reading()
                return item
            if self._error is not None:
                raise self._error
            if self._eof:
                return EOF
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def send(self, kind: int, body: bytes = b"") -> None:
        """Write one message; wait while the socket's buffer is full."""
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("connection closed")
        # One buffer, one send(): a separate 5-byte header write would meet Nagle's
        # algorithm and the peer's delayed ACK on some paths (measured: p99 100 ms).
        transport.write(_HEAD.pack(len(body) + 1, kind) + body)
        if self._write_paused:
            self._drain = asyncio.get_running_loop().create_future()
            await self._drain
            if transport.is_closing():
                raise ConnectionResetError("connection closed")

    def write_now(self, kind: int, bodies: list[bytes]) -> bool:
        """Write one message per body at once, unless the socket's buffer is full or the
        connection is closing (False: nothing written; :meth:`send` waits instead)."""
        transport = self.transport
        if transport is None or self._write_paused or transport.is_closing():
            return False
        pack = _HEAD.pack
        for body in bodies:
            transport.write(pack(len(body) + 1, kind) + body)  # one buffer: see send()
        return True

    def close(self) -> None:
        """Close the connection (buffered writes are still flushed)."""
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once."""
        if self.transport is not None:
            self.transport.abort()
        self._eof = True
        self._wake()


class FrameStream:
    """``FRAME`` messages of a connection, shaped like a gRPC stream (``read``/``write``/
    ``cancel``/``peer``), so that the gRPC transport's stream logic (coalescing writer,
    reader, backpressure: :mod:`._outbound`, :mod:`._inbound`) runs on it unchanged."""

    def __init__(self, proto: FrameProtocol, peer: str) -> None:
        self._proto = proto
        self._peer = peer

    async def read(self) -> bytes | object:
        """The next frame's bytes, :data:`EOF`, or :data:`~._inbound.CARRY` where the
        direct consumer kept a frame's rest (see :data:`DIRECT_BLOCKED`); another message
        type is a protocol error."""
        item = await self._proto.read()
        if item is EOF:
            return EOF
        assert isinstance(item, tuple)
        kind: int = item[0]
        body: bytes = item[1]
        if kind != FRAME:
            if kind == _CARRY_KIND:
                return CARRY
            error = ProtocolError(f"unexpected message type {kind} on an exchange connection")
            # Recorded on the connection, so the server counts and logs it as bad input
            # (the stream's reader only sees "the peer went away").
            self._proto._fail(error)
            raise error
        return body

    async def write(self, frame: bytes) -> None:
        """Send one frame."""
        await self._proto.send(FRAME, frame)

    def write_now(self, frames: list[bytes]) -> bool:
        """Send ``frames`` at once; False (nothing sent) while the socket's buffer is full or
        the connection closes: :meth:`write` is then the way, waiting for room."""
        return self._proto.write_now(FRAME, frames)

    def take_frames(self, consumer: Callable[[bytes], int] | None) -> None:
        """Let ``consumer`` take frames as they arrive (see ``FrameProtocol.on_frame``)."""
        self._proto.on_frame = consumer

    def cancel(self) -> None:
        """Drop the connection."""
        self._proto.abort()

    def peer(self) -> str:
        """The remote socket address (for logs)."""
        return f"tcp:{self._peer}"
