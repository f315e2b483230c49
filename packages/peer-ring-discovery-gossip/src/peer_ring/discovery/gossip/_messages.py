"""The protocol's messages: plain values, encoded by ``_codec`` and framed by ``_packet``.

Names follow memberlist's: a member is identified by its *name*, which for peer-ring is the
node's peer (gRPC) address; its *gossip address* (UDP/TCP ``host, port``) is carried
alongside and may change when the node restarts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from types import MappingProxyType

#: A gossip endpoint: ``(host, port)``.
Address = tuple[str, int]


def _no_meta() -> Mapping[str, str]:
    return MappingProxyType({})


class Status(IntEnum):
    """A member's state in one node's view (the order is memberlist's)."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


@dataclass(frozen=True, slots=True)
class Ping:
    """Are you there? ``target`` names the member meant, so a new process on an old address
    does not answer for its predecessor."""

    seq: int
    target: str


@dataclass(frozen=True, slots=True)
class IndirectPing:
    """Please ping ``target`` at ``target_addr`` for me and forward its ack (or a nack)."""

    seq: int
    target: str
    target_addr: Address
    nack: bool


@dataclass(frozen=True, slots=True)
class Ack:
    """Answer to a :class:`Ping` (or a forwarded indirect one) with the same ``seq``."""

    seq: int


@dataclass(frozen=True, slots=True)
class Nack:
    """Lifeguard: the indirect probe reached no ack, but the helper itself is alive."""

    seq: int


@dataclass(frozen=True, slots=True)
class Alive:
    """``name`` is alive at ``incarnation``, reachable at ``addr``, with ``meta``."""

    name: str
    incarnation: int
    addr: Address
    meta: Mapping[str, str] = field(default_factory=_no_meta)


@dataclass(frozen=True, slots=True)
class Suspect:
    """``sender`` suspects ``name`` (at ``incarnation``) has failed."""

    name: str
    incarnation: int
    sender: str


@dataclass(frozen=True, slots=True)
class Dead:
    """``sender`` declares ``name`` dead; when ``sender == name`` the member left."""

    name: str
    incarnation: int
    sender: str


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """One member in a push-pull full-state exchange."""

    name: str
    incarnation: int
    addr: Address
    status: Status
    meta: Mapping[str, str] = field(default_factory=_no_meta)


@dataclass(frozen=True, slots=True)
class PushPull:
    """A whole member table, sent over TCP in both directions of an exchange."""

    join: bool
    members: tuple[MemberRecord, ...]


Message = Ping | IndirectPing | Ack | Nack | Alive | Suspect | Dead | PushPull
