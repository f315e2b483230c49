"""The TCP transport's wire layer: framing, the preamble check and flow control.

``FrameProtocol`` is driven two ways: byte by byte through a recording stand-in for the
socket (every split of the stream, exact thresholds), and over real loopback sockets for
the back-pressure a slow reader puts on a fast writer (the kernel's buffers are part of
that path, so no stand-in would do).
"""

from __future__ import annotations

import asyncio
import struct
from socket import SO_RCVBUF, SO_SNDBUF, SOL_SOCKET
from typing import Any

import pytest

from peer_ring.core.transport._inbound import CARRY
from peer_ring.core.transport._options import EOF
from peer_ring.core.transport._tcp_wire import (
    DIRECT_BLOCKED,
    DIRECT_DECLINED,
    DIRECT_DONE,
    FRAME,
    HELLO,
    INTERNAL,
    KIND_TRANSFER,
    PREAMBLE,
    READ_HIGH_WATER,
    TOO_LARGE,
    FrameProtocol,
    FrameStream,
    ProtocolError,
    decode_hello,
    decode_status,
    describe_preamble,
    encode_hello,
    encode_status,
    message,
)

#: Upper bound of any single wait on a real socket (seconds); only reached on a bug.
LIMIT = 15.0


class Socket:
    """What ``FrameProtocol`` sees of its asyncio transport, recorded."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.reading = True
        self.aborted = False
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written += data

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def abort(self) -> None:
        self.aborted = self.closing = True

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 4242) if name == "peername" else default


def connected(max_body: int = 1 << 20) -> tuple[FrameProtocol, Socket]:
    made: list[FrameProtocol] = []
    proto = FrameProtocol(max_body, on_made=made.append)
    sock = Socket()
    proto.connection_made(sock)  # type: ignore[arg-type]
    assert made == [proto] and bytes(sock.written) == PREAMBLE  # each side opens with it
    assert proto.peername == "127.0.0.1:4242"
    return proto, sock


async def read_now(proto: FrameProtocol) -> Any:
    return await asyncio.wait_for(proto.read(), LIMIT)


# -- framing ------------------------------------------------------------------------------


async def test_messages_split_at_every_byte_arrive_whole_and_in_order() -> None:
    proto, sock = connected()
    bodies = [b"", b"one", bytes(range(256)) * 3]
    stream = PREAMBLE + b"".join(message(FRAME, body) for body in bodies)
    for i in range(len(stream)):
        proto.data_received(stream[i : i + 1])
    assert [await read_now(proto) for _ in bodies] == [(FRAME, body) for body in bodies]
    assert not sock.aborted
    proto.eof_received()
    assert await read_now(proto) is EOF


async def test_queued_messages_are_read_before_the_end_or_the_error() -> None:
    proto, _ = connected()
    proto.data_received(PREAMBLE + message(FRAME, b"a") + message(FRAME, b"b"))
    proto.connection_lost(ConnectionResetError("reset by peer"))
    assert await read_now(proto) == (FRAME, b"a")
    assert await read_now(proto) == (FRAME, b"b")
    with pytest.raises(ConnectionResetError, match="reset by peer"):
        await read_now(proto)


async def test_a_waiting_reader_is_woken_by_data_and_by_a_clean_close() -> None:
    proto, _ = connected()
    proto.data_received(PREAMBLE)
    reader = asyncio.ensure_future(proto.read())
    await asyncio.sleep(0)
    assert not reader.done()
    proto.data_received(message(FRAME, b"late"))
    assert await asyncio.wait_for(reader, LIMIT) == (FRAME, b"late")
    reader = asyncio.ensure_future(proto.read())
    await asyncio.sleep(0)
    proto.connection_lost(None)  # a clean close is the end of the stream, not an error
    assert await asyncio.wait_for(reader, LIMIT) is EOF


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x16\x03", "started a TLS handshake"),  # already wrong in the first bytes
        (b"PRI * HTTP/2.0\r\n", "speaks HTTP/2"),
        (b"\x00\x00\x12\x04\x00\x00\x00\x00\x00", "speaks HTTP/2"),  # a gRPC server's SETTINGS
        (b"PRTCP\x01G\n", "transport kind is b'G'"),
        (b"PRTCP\x09T\n", "protocol version 9, this node 1"),
        (b"SSH-2.0-OpenSSH", "not a peer-ring TCP transport peer"),
    ],
)
async def test_a_wrong_preamble_names_what_the_peer_speaks(data: bytes, reason: str) -> None:
    proto, sock = connected()
    proto.data_received(data)
    assert sock.aborted
    with pytest.raises(ProtocolError, match=reason):
        await read_now(proto)


async def test_a_partial_preamble_waits_for_the_rest() -> None:
    proto, sock = connected()
    proto.data_received(PREAMBLE[:3])
    assert not sock.aborted
    proto.data_received(PREAMBLE[3:] + message(FRAME, b"x"))
    assert await read_now(proto) == (FRAME, b"x")


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        (struct.pack(">IB", 0, FRAME), "message of 0 bytes"),
        (struct.pack(">IB", 102, FRAME), "message of 102 bytes announced, over the limit of 101"),
    ],
)
async def test_a_bad_length_fails_before_the_body_arrives(head: bytes, reason: str) -> None:
    proto, sock = connected(max_body=100)
    proto.data_received(PREAMBLE + message(FRAME, b"f" * 100) + head)
    assert sock.aborted  # the announced size alone ends the connection
    assert await read_now(proto) == (FRAME, b"f" * 100)  # what came before is kept
    with pytest.raises(ProtocolError, match=reason):
        await read_now(proto)


async def test_reading_pauses_above_the_high_water_and_resumes_below_half() -> None:
    proto, sock = connected(max_body=1 << 20)
    body = b"m" * ((1 << 20) - 1)  # one byte of type: 1 MiB per message
    proto.data_received(PREAMBLE)
    for _ in range(READ_HIGH_WATER >> 20):
        proto.data_received(message(FRAME, body))
    assert sock.reading  # exactly at the high water: still reading
    proto.data_received(message(FRAME, b"over"))
    assert not sock.reading
    proto.data_received(message(FRAME, b"more"))  # what is already in flight is still queued
    # Reads below half of the high water resume the socket, once.
    await read_now(proto)
    assert not sock.reading  # 3 MiB + 10 bytes still queued
    await read_now(proto)
    assert not sock.reading  # 2 MiB + 10 bytes: not below half yet
    await read_now(proto)
    assert sock.reading
    rest = [await read_now(proto) for _ in range(3)]
    assert rest == [(FRAME, body), (FRAME, b"over"), (FRAME, b"more")]


async def test_send_frames_one_message_and_refuses_a_closed_connection() -> None:
    proto, sock = connected()
    del sock.written[:]
    await proto.send(FRAME, b"payload")
    assert bytes(sock.written) == message(FRAME, b"payload")
    proto.close()
    with pytest.raises(ConnectionResetError):
        await proto.send(FRAME, b"after close")
    unconnected = FrameProtocol(100)
    with pytest.raises(ConnectionResetError):
        await unconnected.send(FRAME)
    unconnected.close()  # nothing to close: no error
    unconnected.abort()
    assert await unconnected.read() is EOF


async def test_a_send_waiting_for_the_socket_fails_when_the_connection_is_lost() -> None:
    proto, sock = connected()
    proto.pause_writing()
    sender = asyncio.ensure_future(proto.send(FRAME, b"stuck"))
    await asyncio.sleep(0)
    assert not sender.done()  # the kernel buffer is full: the writer waits
    sock.closing = True
    proto.connection_lost(None)
    with pytest.raises(ConnectionResetError, match="connection closed"):
        await asyncio.wait_for(sender, LIMIT)


async def test_a_send_waiting_for_the_socket_resumes_with_it() -> None:
    proto, _ = connected()
    proto.pause_writing()
    sender = asyncio.ensure_future(proto.send(FRAME, b"slow"))
    await asyncio.sleep(0)
    assert not sender.done()
    proto.resume_writing()
    await asyncio.wait_for(sender, LIMIT)
    proto.resume_writing()  # a second resume with nobody waiting is harmless


async def test_connection_lost_runs_the_loss_callback_once() -> None:
    proto, _ = connected()
    lost: list[int] = []
    proto.on_lost = lambda: lost.append(1)
    proto.connection_lost(None)
    proto.connection_lost(None)
    assert lost == [1]


async def test_frame_stream_passes_frames_and_refuses_other_messages() -> None:
    proto, sock = connected()
    stream = FrameStream(proto, "10.0.0.1:5")
    assert stream.peer() == "tcp:10.0.0.1:5"
    proto.data_received(PREAMBLE + message(FRAME, b"f1"))
    assert await asyncio.wait_for(stream.read(), LIMIT) == b"f1"
    del sock.written[:]
    await stream.write(b"out")
    assert bytes(sock.written) == message(FRAME, b"out")
    proto.data_received(message(HELLO, b"h"))
    with pytest.raises(ProtocolError, match="unexpected message type 1 on an exchange"):
        await asyncio.wait_for(stream.read(), LIMIT)
    # The violation ends the connection and stays recorded on it (the server counts it).
    assert sock.aborted
    with pytest.raises(ProtocolError, match="unexpected message type 1"):
        await asyncio.wait_for(proto.read(), LIMIT)


async def test_cancelling_a_frame_stream_ends_it() -> None:
    proto, sock = connected()
    stream = FrameStream(proto, "10.0.0.1:5")
    stream.cancel()
    assert sock.aborted
    assert await asyncio.wait_for(stream.read(), LIMIT) is EOF


# -- direct consumers (FrameProtocol.on_frame) -----------------------------------------------


async def waiting_reader(stream: FrameStream) -> asyncio.Future[Any]:
    reader = asyncio.ensure_future(stream.read())
    await asyncio.sleep(0)  # now it waits in read()
    assert not reader.done()
    return reader


async def test_a_consumer_takes_frames_only_while_the_reader_waits_with_nothing_queued() -> None:
    proto, _ = connected()
    stream = FrameStream(proto, "10.0.0.1:5")
    taken: list[bytes] = []
    stream.take_frames(lambda body: taken.append(body) or DIRECT_DONE)
    # No reader waiting yet: queued for it, in order.
    proto.data_received(PREAMBLE + message(FRAME, b"q1"))
    assert taken == []
    assert await asyncio.wait_for(stream.read(), LIMIT) == b"q1"
    reader = await waiting_reader(stream)
    proto.data_received(message(FRAME, b"d1") + message(FRAME, b"d2"))
    assert taken == [b"d1", b"d2"]
    assert not reader.done()  # the reader task never woke
    # Another message type goes to the reader, and everything behind it too (order).
    proto.data_received(message(HELLO, b"h") + message(FRAME, b"after"))
    assert taken == [b"d1", b"d2"]
    with pytest.raises(ProtocolError, match="unexpected message type 1"):
        await asyncio.wait_for(reader, LIMIT)


async def test_declined_and_blocked_frames_go_to_the_reader_with_what_follows() -> None:
    proto, _ = connected()
    stream = FrameStream(proto, "10.0.0.1:5")
    answers = iter([DIRECT_DECLINED, DIRECT_BLOCKED])
    seen: list[bytes] = []

    def consumer(body: bytes) -> int:
        seen.append(body)
        return next(answers)

    stream.take_frames(consumer)
    proto.data_received(PREAMBLE)
    reader = await waiting_reader(stream)
    proto.data_received(message(FRAME, b"bad") + message(FRAME, b"next"))
    assert seen == [b"bad"]  # "next" queued behind the declined frame
    assert await asyncio.wait_for(reader, LIMIT) == b"bad"
    assert await asyncio.wait_for(stream.read(), LIMIT) == b"next"
    reader = await waiting_reader(stream)
    proto.data_received(message(FRAME, b"half") + message(FRAME, b"later"))
    assert seen == [b"bad", b"half"]
    # The consumer kept the rest of "half": the reader gets CARRY in its place, then "later".
    assert await asyncio.wait_for(reader, LIMIT) is CARRY
    assert await asyncio.wait_for(stream.read(), LIMIT) == b"later"


async def test_a_failing_consumer_ends_the_connection_after_what_came_before() -> None:
    proto, sock = connected()
    stream = FrameStream(proto, "10.0.0.1:5")

    def consumer(body: bytes) -> int:
        if body == b"boom":
            raise RuntimeError("a bug below the transport")
        return DIRECT_DONE

    stream.take_frames(consumer)
    proto.data_received(PREAMBLE)
    reader = await waiting_reader(stream)
    proto.data_received(message(FRAME, b"ok") + message(FRAME, b"boom") + message(FRAME, b"x"))
    assert sock.aborted
    with pytest.raises(RuntimeError, match="a bug below"):
        await asyncio.wait_for(reader, LIMIT)


async def test_write_now_writes_whole_messages_unless_the_socket_is_full_or_closing() -> None:
    proto, sock = connected()
    stream = FrameStream(proto, "10.0.0.1:5")
    del sock.written[:]
    assert stream.write_now([b"a", b"bc"])
    assert bytes(sock.written) == message(FRAME, b"a") + message(FRAME, b"bc")
    proto.pause_writing()
    assert not stream.write_now([b"d"])
    proto.resume_writing()
    sock.close()
    assert not stream.write_now([b"e"])
    assert bytes(sock.written) == message(FRAME, b"a") + message(FRAME, b"bc")


# -- HELLO and status bodies ----------------------------------------------------------------


def test_hello_round_trip_and_malformed_bodies() -> None:
    body = encode_hello(KIND_TRANSFER, "10.0.0.7:7100", "s3cret")
    assert decode_hello(body) == (KIND_TRANSFER, "10.0.0.7:7100", b"s3cret")
    assert decode_hello(encode_hello(KIND_TRANSFER, "a:1", None)) == (KIND_TRANSFER, "a:1", b"")
    with pytest.raises(ProtocolError, match="malformed HELLO: wrong length"):
        decode_hello(body + b"x")  # trailing garbage
    with pytest.raises(ProtocolError, match="malformed HELLO: wrong length"):
        decode_hello(body[:-1])  # token cut short
    with pytest.raises(ProtocolError, match="malformed HELLO"):
        decode_hello(b"")
    with pytest.raises(ProtocolError, match="malformed HELLO"):
        decode_hello(b"\x01\x00\x02\xff\xfe\x00\x00")  # sender not UTF-8


def test_status_round_trip_truncates_long_reasons() -> None:
    assert decode_status(encode_status(TOO_LARGE, "too big")) == (TOO_LARGE, "too big")
    code, reason = decode_status(encode_status(TOO_LARGE, "é" * 5000))
    assert code == TOO_LARGE and len(reason.encode()) <= 2048 + 3  # cut, then decoded leniently
    assert decode_status(b"") == (INTERNAL, "empty status")


def test_describe_preamble_of_short_garbage() -> None:
    assert "it sent b'\\x01'" in describe_preamble(b"\x01")


# -- real sockets: back-pressure ------------------------------------------------------------


async def until(condition: Any) -> None:
    # Socket buffer state has no event to wait on; bounded by the caller.
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(0.005)


@pytest.mark.cluster  # real loopback sockets (the tier rule does not see create_server)
async def test_a_slow_reader_pauses_the_socket_and_the_writer_then_everything_arrives() -> None:
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[FrameProtocol] = loop.create_future()
    server = await loop.create_server(
        lambda: FrameProtocol(1 << 20, on_made=accepted.set_result), "127.0.0.1", 0
    )
    try:
        port = server.sockets[0].getsockname()[1]
        _, client = await loop.create_connection(lambda: FrameProtocol(1 << 20), "127.0.0.1", port)
        receiver = await asyncio.wait_for(accepted, LIMIT)
        assert client.transport is not None and receiver.transport is not None
        client.transport.set_write_buffer_limits(high=64 * 1024)
        # Small kernel buffers, so that what the kernel absorbs cannot hide the pause.
        small = 64 * 1024
        client.transport.get_extra_info("socket").setsockopt(SOL_SOCKET, SO_SNDBUF, small)
        receiver.transport.get_extra_info("socket").setsockopt(SOL_SOCKET, SO_RCVBUF, small)
        bodies = [bytes([i]) * (256 * 1024 - 1) for i in range(40)]  # 10 MiB in all

        async def write_all() -> None:
            for body in bodies:
                await client.send(FRAME, body)

        writer = asyncio.ensure_future(write_all())
        # Nobody reads: the receiver stops reading at its high water, the kernel buffers
        # fill, and the writer waits instead of buffering 10 MiB in the process.
        await asyncio.wait_for(until(lambda: not receiver.transport.is_reading()), LIMIT)
        await asyncio.wait_for(until(lambda: client._write_paused), LIMIT)
        assert not writer.done()
        received = [await read_now(receiver) for _ in bodies]
        await asyncio.wait_for(writer, LIMIT)
        assert received == [(FRAME, body) for body in bodies]
        assert receiver.transport.is_reading()
        client.close()
        assert await read_now(receiver) is EOF
    finally:
        server.close()
        await server.wait_closed()
