"""Compact binary encoding of messages (stdlib ``struct`` only).

Each message is one type byte followed by its fields: integers big-endian fixed width,
strings as a 2-byte length and UTF-8, metadata as a 1-byte count of string pairs. Decoding is
strict: a short buffer, trailing bytes, an unknown type or a bad enum raise
:class:`DecodeError`, which the packet layer counts and drops.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from types import MappingProxyType

from peer_ring.discovery.gossip._messages import (
    Ack,
    Address,
    Alive,
    Dead,
    IndirectPing,
    MemberRecord,
    Message,
    Nack,
    Ping,
    PushPull,
    Status,
    Suspect,
)

PING, INDIRECT_PING, ACK, NACK, ALIVE, SUSPECT, DEAD, PUSH_PULL = range(1, 9)

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")

_EMPTY: Mapping[str, str] = MappingProxyType({})

#: Most metadata pairs per member (one length byte).
MAX_META_PAIRS = 255


class DecodeError(ValueError):
    """A message that does not decode (truncated, unknown type, bad field)."""


class _Writer:
    __slots__ = ("parts",)

    def __init__(self, kind: int) -> None:
        self.parts: list[bytes] = [_U8.pack(kind)]

    def u8(self, value: int) -> None:
        self.parts.append(_U8.pack(value))

    def u32(self, value: int) -> None:
        self.parts.append(_U32.pack(value))

    def u64(self, value: int) -> None:
        self.parts.append(_U64.pack(value))

    def text(self, value: str) -> None:
        data = value.encode()
        if len(data) > 0xFFFF:
            raise ValueError("string longer than 65535 bytes")
        self.parts.append(_U16.pack(len(data)))
        self.parts.append(data)

    def addr(self, value: Address) -> None:
        self.text(value[0])
        self.parts.append(_U16.pack(value[1]))

    def meta(self, value: Mapping[str, str]) -> None:
        if len(value) > MAX_META_PAIRS:
            raise ValueError(f"at most {MAX_META_PAIRS} metadata entries")
        self.u8(len(value))
        for k in sorted(value):
            self.text(k)
            self.text(value[k])

    def done(self) -> bytes:
        return b"".join(self.parts)


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 1

    def _unpack(self, fmt: struct.Struct) -> int:
        try:
            (value,) = fmt.unpack_from(self.data, self.pos)
        except struct.error:
            raise DecodeError("truncated message") from None
        self.pos += fmt.size
        return int(value)

    def u8(self) -> int:
        return self._unpack(_U8)

    def u16(self) -> int:
        return self._unpack(_U16)

    def u32(self) -> int:
        return self._unpack(_U32)

    def u64(self) -> int:
        return self._unpack(_U64)

    def text(self) -> str:
        size = self._unpack(_U16)
        start = self.pos
        end = start + size
        if end > len(self.data):
            raise DecodeError("truncated message")
        self.pos = end
        try:
            return self.data[start:end].decode()
        except UnicodeDecodeError:
            raise DecodeError("string is not UTF-8") from None

    def addr(self) -> Address:
        host = self.text()
        return host, self._unpack(_U16)

    def meta(self) -> Mapping[str, str]:
        count = self._unpack(_U8)
        if not count:
            return _EMPTY
        return MappingProxyType({self.text(): self.text() for _ in range(count)})

    def end(self) -> None:
        if self.pos != len(self.data):
            raise DecodeError("trailing bytes after message")


def _record(w: _Writer, r: MemberRecord) -> None:
    w.text(r.name)
    w.u64(r.incarnation)
    w.addr(r.addr)
    w.u8(int(r.status))
    w.meta(r.meta)


def encode(msg: Message) -> bytes:
    """The bytes of one message.

    Raises:
        ValueError: a field does not fit its encoding (string too long, too much metadata).
    """
    if isinstance(msg, Ping):
        w = _Writer(PING)
        w.u32(msg.seq)
        w.text(msg.target)
    elif isinstance(msg, Ack):
        w = _Writer(ACK)
        w.u32(msg.seq)
    elif isinstance(msg, Alive):
        w = _Writer(ALIVE)
        w.text(msg.name)
        w.u64(msg.incarnation)
        w.addr(msg.addr)
        w.meta(msg.meta)
    elif isinstance(msg, Suspect | Dead):
        w = _Writer(SUSPECT if isinstance(msg, Suspect) else DEAD)
        w.text(msg.name)
        w.u64(msg.incarnation)
        w.text(msg.sender)
    elif isinstance(msg, IndirectPing):
        w = _Writer(INDIRECT_PING)
        w.u32(msg.seq)
        w.text(msg.target)
        w.addr(msg.target_addr)
        w.u8(1 if msg.nack else 0)
    elif isinstance(msg, Nack):
        w = _Writer(NACK)
        w.u32(msg.seq)
    elif isinstance(msg, PushPull):
        w = _Writer(PUSH_PULL)
        w.u8(1 if msg.join else 0)
        w.u32(len(msg.members))
        for r in msg.members:
            _record(w, r)
    else:  # pragma: no cover - exhaustive over Message
        raise TypeError(f"not a message: {msg!r}")
    return w.done()


def _status(value: int) -> Status:
    try:
        return Status(value)
    except ValueError:
        raise DecodeError(f"unknown member status {value}") from None


def decode(data: bytes) -> Message:
    """The message in ``data`` (exactly one).

    Raises:
        DecodeError: ``data`` is not one well-formed message.
    """
    if not data:
        raise DecodeError("empty message")
    r = _Reader(data)
    kind = data[0]
    msg: Message
    if kind == PING:
        msg = Ping(r.u32(), r.text())
    elif kind == ACK:
        msg = Ack(r.u32())
    elif kind == ALIVE:
        msg = Alive(r.text(), r.u64(), r.addr(), r.meta())
    elif kind == SUSPECT:
        msg = Suspect(r.text(), r.u64(), r.text())
    elif kind == DEAD:
        msg = Dead(r.text(), r.u64(), r.text())
    elif kind == INDIRECT_PING:
        msg = IndirectPing(r.u32(), r.text(), r.addr(), r.u8() != 0)
    elif kind == NACK:
        msg = Nack(r.u32())
    elif kind == PUSH_PULL:
        join = r.u8() != 0
        count = r.u32()
        if count > len(data):  # each record is several bytes: a cheap sanity bound
            raise DecodeError("member count larger than the message")
        records = []
        for _ in range(count):
            name, inc, addr = r.text(), r.u64(), r.addr()
            records.append(MemberRecord(name, inc, addr, _status(r.u8()), r.meta()))
        msg = PushPull(join, tuple(records))
    else:
        raise DecodeError(f"unknown message type {kind}")
    r.end()
    return msg
