"""What the pure protocol asks its driver to do, and what it reports."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from peer_ring.discovery.gossip._messages import Address, Ping, PushPull


@dataclass(frozen=True, slots=True)
class SendPacket:
    """Send one UDP packet holding these encoded messages (framed by ``PacketCodec``)."""

    to: Address
    messages: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class OpenStream:
    """Open a TCP connection to ``to``, send ``message`` and read the peer's reply; then call
    ``Swim.stream_done(now, id, reply_or_None)``."""

    id: int
    to: Address
    message: PushPull


@dataclass(frozen=True, slots=True)
class StreamPing:
    """The TCP fallback probe: connect to ``to``, send ``ping``, expect ``Ack(ping.seq)``
    within ``timeout`` seconds; then call ``Swim.stream_ping_done(now, ping.seq, ok)``."""

    to: Address
    ping: Ping
    timeout: float


Output = SendPacket | OpenStream | StreamPing


class EventKind(Enum):
    """A change in one node's view of one member."""

    JOINED = "joined"  # new, or back from dead/left
    UPDATED = "updated"  # metadata or gossip address changed
    SUSPECTED = "suspected"
    REFUTED = "refuted"  # was suspected, alive again at a higher incarnation
    DIED = "died"
    LEFT = "left"


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """``kind`` happened to member ``name``, as seen by this node; ``source`` is the member
    whose message caused it (the accuser, for ``SUSPECTED`` and ``DIED``)."""

    kind: EventKind
    name: str
    incarnation: int
    source: str = ""
