"""Message encoding, packet framing, encryption and the drop-and-count of bad packets."""

from __future__ import annotations

import os
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peer_ring.core import InvalidArgumentError
from peer_ring.discovery.gossip import BadPacketError, Keyring, PacketCodec, Status
from peer_ring.discovery.gossip._codec import DecodeError, decode, encode
from peer_ring.discovery.gossip._messages import (
    Ack,
    Alive,
    Dead,
    IndirectPing,
    MemberRecord,
    Message,
    Nack,
    Ping,
    PushPull,
    Suspect,
)

names = st.text(max_size=40)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
addrs = st.tuples(st.text(max_size=30), st.integers(0, 65535))
metas = st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=5)
messages = st.one_of(
    st.builds(Ping, u32, names),
    st.builds(IndirectPing, u32, names, addrs, st.booleans()),
    st.builds(Ack, u32),
    st.builds(Nack, u32),
    st.builds(Alive, names, u64, addrs, metas),
    st.builds(Suspect, names, u64, names),
    st.builds(Dead, names, u64, names),
    st.builds(
        PushPull,
        st.booleans(),
        st.lists(
            st.builds(MemberRecord, names, u64, addrs, st.sampled_from(list(Status)), metas),
            max_size=4,
        ).map(tuple),
    ),
)


@given(messages)
def test_every_message_round_trips(msg) -> None:
    data = encode(msg)
    back = decode(data)
    assert type(back) is type(msg)
    assert encode(back) == data


@given(messages, st.data())
def test_every_truncation_is_a_decode_error(msg, data) -> None:
    raw = encode(msg)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(DecodeError):
        decode(raw[:cut])
    with pytest.raises(DecodeError):
        decode(raw + b"\x00")


def test_unknown_type_and_bad_status() -> None:
    with pytest.raises(DecodeError, match="unknown message type"):
        decode(b"\xff\x00")
    record = MemberRecord("a", 1, ("h", 1), Status.ALIVE)
    raw = bytearray(encode(PushPull(False, (record,))))
    raw[-2] = 9  # the status byte (metadata count follows)
    with pytest.raises(DecodeError, match="status"):
        decode(bytes(raw))


def test_a_ping_is_small() -> None:
    codec = PacketCodec("peer-ring")
    assert len(codec.pack_messages([Ping(7, "10.0.0.1:7101")])) <= 48


@pytest.mark.parametrize("encrypted", [False, True])
def test_packet_round_trip(encrypted: bool) -> None:
    keyring = Keyring(os.urandom(32)) if encrypted else None
    codec = PacketCodec("c1", keyring)
    msgs: list[Message] = [Ping(1, "a"), Alive("a", 5, ("127.0.0.1", 7946), {"zone": "z"}), Ack(3)]
    assert codec.unpack(codec.pack_messages(msgs)) == msgs


def reason(codec: PacketCodec, data: bytes) -> str:
    with pytest.raises(BadPacketError) as info:
        codec.unpack(data)
    return info.value.reason


def test_bad_packets_have_reasons() -> None:
    codec = PacketCodec("c1")
    good = codec.pack_messages([Ping(1, "a")])
    assert reason(codec, good[:3]) == "truncated"
    assert reason(codec, good[:-1]) in ("checksum", "truncated")
    assert reason(codec, b"xx" + good[2:]) == "bad_magic"
    assert reason(PacketCodec("c2"), good) == "wrong_cluster"
    assert reason(PacketCodec("c1", max_size=100), good + b"\x00" * 200) == "too_large"
    flipped = bytearray(good)
    flipped[10] ^= 0x40
    assert reason(codec, bytes(flipped)) == "checksum"
    # A valid checksum over a body holding garbage: a bad message.
    body = b"\xa7g\x01\x00\x02c1" + b"\x01\x00\x02\xee\x00"
    forged = body + zlib.crc32(body).to_bytes(4, "big")
    assert reason(codec, forged) == "bad_message"


def test_encryption_refuses_wrong_key_and_plaintext() -> None:
    k1, k2 = os.urandom(32), os.urandom(16)
    sealed = PacketCodec("c", Keyring(k1)).pack_messages([Ack(1)])
    assert reason(PacketCodec("c", Keyring(k2)), sealed) == "decrypt_failed"
    assert reason(PacketCodec("c"), sealed) == "decrypt_failed"
    plain = PacketCodec("c").pack_messages([Ack(1)])
    assert reason(PacketCodec("c", Keyring(k1)), plain) == "plaintext_refused"
    # The cluster name is authenticated: moving a packet to another cluster name fails.
    moved = sealed.replace(b"\x01c", b"\x01d", 1)
    assert reason(PacketCodec("d", Keyring(k1)), moved) == "decrypt_failed"


def test_key_rotation_without_a_flag_day() -> None:
    old, new = os.urandom(32), os.urandom(32)
    a, b = Keyring(old), Keyring(old)
    codec_a, codec_b = PacketCodec("c", a), PacketCodec("c", b)
    a.add(new)  # step 1 on a only: b still reads a's packets (a still encrypts with old)
    assert codec_b.unpack(codec_a.pack_messages([Ack(1)])) == [Ack(1)]
    b.add(new)
    a.use(new)  # step 2: a encrypts with new; b accepts it as a secondary key
    assert codec_b.unpack(codec_a.pack_messages([Ack(2)])) == [Ack(2)]
    assert codec_a.unpack(codec_b.pack_messages([Ack(3)])) == [Ack(3)]
    b.use(new)
    a.remove(old)  # step 3
    b.remove(old)
    assert codec_b.unpack(codec_a.pack_messages([Ack(4)])) == [Ack(4)]
    assert a.keys == (new,)
    with pytest.raises(InvalidArgumentError):
        a.remove(new)
    with pytest.raises(InvalidArgumentError):
        Keyring(b"short")
