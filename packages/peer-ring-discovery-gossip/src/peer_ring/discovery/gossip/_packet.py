"""Packet framing: header with the cluster name, several messages per packet, integrity.

Layout of one UDP packet (and of one TCP push-pull frame, after a 4-byte length)::

    magic "\\xa7g" | version (1) | flags (1) | cluster length (1) | cluster (UTF-8)
    body:  plain      -> count (1) | (length (2) | message)* | CRC-32 of everything before
           encrypted  -> nonce (12) | AES-GCM(count | (length | message)*) | tag (16)

The header is the AES-GCM associated data, so the cluster name is authenticated too. Any
packet that fails a check raises :class:`BadPacketError` with a short ``reason`` that the
node counts (``truncated``, ``bad_magic``, ``wrong_cluster``, ``decrypt_failed``,
``plaintext_refused``, ``checksum``, ``too_large``, ``bad_message``).
"""

from __future__ import annotations

import struct
import zlib

from peer_ring.discovery.gossip._codec import DecodeError, decode, encode
from peer_ring.discovery.gossip._keyring import OVERHEAD, Keyring
from peer_ring.discovery.gossip._messages import Message

MAGIC = b"\xa7g"
VERSION = 1
FLAG_ENCRYPTED = 0x01
_LEN = struct.Struct(">H")
_CRC = struct.Struct(">I")
#: Bytes each message adds to a packet besides its own encoding (its length prefix).
PER_MESSAGE_OVERHEAD = 2
#: Most messages in one packet.
MAX_MESSAGES = 255


class BadPacketError(ValueError):
    """An inbound packet that is dropped; ``reason`` is the counter it goes to."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class PacketCodec:
    """Frames and unframes packets of one cluster, optionally encrypted.

    Args:
        cluster: the cluster name; packets of another cluster are refused.
        keyring: when given, packets are encrypted with its primary key and inbound
            packets must decrypt under one of its keys (plaintext ones are refused).
        max_size: inbound packets larger than this are refused.
    """

    def __init__(self, cluster: str, keyring: Keyring | None = None, max_size: int = 65_507):
        name = cluster.encode()
        self.keyring = keyring
        self.max_size = max_size
        self._cluster = name
        self._plain_header = MAGIC + bytes((VERSION, 0, len(name))) + name
        self._enc_header = MAGIC + bytes((VERSION, FLAG_ENCRYPTED, len(name))) + name

    def overhead(self) -> int:
        """Bytes a packet spends besides its messages (header, count, CRC or crypto)."""
        crypto = OVERHEAD if self.keyring is not None else _CRC.size
        return len(self._plain_header) + 1 + crypto

    def pack(self, messages: list[bytes]) -> bytes:
        """One packet carrying the already-encoded ``messages`` (at most 255)."""
        if not 0 < len(messages) <= MAX_MESSAGES:
            raise ValueError("a packet carries 1 to 255 messages")
        parts = [bytes((len(messages),))]
        for m in messages:
            parts.append(_LEN.pack(len(m)))
            parts.append(m)
        body = b"".join(parts)
        if self.keyring is not None:
            header = self._enc_header
            return header + self.keyring.encrypt(body, header)
        framed = self._plain_header + body
        return framed + _CRC.pack(zlib.crc32(framed))

    def pack_messages(self, messages: list[Message]) -> bytes:
        """Encode and frame ``messages``."""
        return self.pack([encode(m) for m in messages])

    def unpack(self, data: bytes) -> list[Message]:
        """The messages of one inbound packet.

        Raises:
            BadPacketError: the packet is dropped (see the module docs for the reasons).
        """
        if len(data) > self.max_size:
            raise BadPacketError("too_large", f"{len(data)} bytes")
        if len(data) < 5:
            raise BadPacketError("truncated", "shorter than a header")
        if data[:2] != MAGIC or data[2] != VERSION:
            raise BadPacketError("bad_magic")
        flags, name_len = data[3], data[4]
        header_end = 5 + name_len
        if len(data) < header_end:
            raise BadPacketError("truncated", "cluster name cut")
        if data[5:header_end] != self._cluster:
            raise BadPacketError("wrong_cluster", repr(data[5:header_end][:64]))
        header = data[:header_end]
        if flags & FLAG_ENCRYPTED:
            if self.keyring is None:
                raise BadPacketError("decrypt_failed", "encrypted packet, no keyring")
            body = self.keyring.decrypt(data[header_end:], header)
            if body is None:
                raise BadPacketError("decrypt_failed")
        else:
            if self.keyring is not None:
                raise BadPacketError("plaintext_refused")
            if len(data) < header_end + 1 + _CRC.size:
                raise BadPacketError("truncated", "no body")
            (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
            if zlib.crc32(data[: -_CRC.size]) != crc:
                raise BadPacketError("checksum")
            body = data[header_end : -_CRC.size]
        return _split(body)


def _split(body: bytes) -> list[Message]:
    if not body:
        raise BadPacketError("truncated", "empty body")
    count, pos = body[0], 1
    out: list[Message] = []
    try:
        for _ in range(count):
            if pos + 2 > len(body):
                raise BadPacketError("truncated", "message length cut")
            (size,) = _LEN.unpack_from(body, pos)
            pos += 2
            if pos + size > len(body):
                raise BadPacketError("truncated", "message cut")
            out.append(decode(body[pos : pos + size]))
            pos += size
    except DecodeError as exc:
        raise BadPacketError("bad_message", str(exc)) from None
    if pos != len(body) or not out:
        raise BadPacketError("bad_message", "trailing bytes or no message")
    return out
