"""The member view: etcd's keys under the prefix, as of one revision.

A listing replaces the view at its revision; a watch event applies only when it is newer
than the view. That one rule makes a re-list racing with a live watch harmless (events the
listing already reflects are skipped) and makes a replayed event a no-op.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from peer_ring.core import Member
from peer_ring.discovery.etcd._members import decode_member


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key of a listing.

    Attributes:
        key: the etcd key.
        value: its value.
        mod_revision: the revision of its last change.
        lease: the lease the key is attached to (0: none).
    """

    key: bytes
    value: bytes
    mod_revision: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Listing:
    """The keys under a prefix and the store revision they were read at."""

    revision: int
    kvs: tuple[KeyValue, ...]


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change seen by a watch.

    Attributes:
        kind: ``"put"`` or ``"delete"``.
        key: the changed key.
        value: the new value (empty for a delete).
        revision: the revision of the change (for a delete, the revision of the deletion).
    """

    kind: Literal["put", "delete"]
    key: bytes
    value: bytes
    revision: int


class MemberView:
    """Members under ``prefix`` as of :attr:`revision`.

    Args:
        prefix: the normalized key prefix.
    """

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._members: dict[bytes, Member] = {}
        self.revision = 0

    @property
    def members(self) -> dict[bytes, Member]:
        """Key -> member (a copy)."""
        return dict(self._members)

    def replace(self, listing: Listing) -> bool:
        """Adopt ``listing`` unless the view is newer; returns whether it was adopted.

        A listing at a *lower* revision than the view is adopted too: etcd's revision only
        goes backwards when it was restored or wiped, and then the listing is the truth.
        """
        if listing.revision == self.revision and self.revision != 0:
            return False
        members: dict[bytes, Member] = {}
        for kv in listing.kvs:
            member = decode_member(self._prefix, kv.key, kv.value)
            if member is not None:
                members[kv.key] = member
        self._members = members
        self.revision = listing.revision
        return True

    def apply(self, events: Iterable[WatchEvent]) -> bool:
        """Apply the events newer than the view; returns whether the member set changed."""
        changed = False
        for event in events:
            if event.revision <= self.revision:
                continue  # already reflected by the listing (or a replay)
            self.revision = event.revision
            if event.kind == "delete":
                changed |= self._members.pop(event.key, None) is not None
                continue
            member = decode_member(self._prefix, event.key, event.value)
            if member is None:
                continue
            previous = self._members.get(event.key)
            self._members[event.key] = member
            changed |= previous is None or dict(previous.metadata) != dict(member.metadata)
        return changed

    def same_members(self, listing: Listing) -> bool:
        """Whether ``listing`` holds exactly the view's members (with metadata)."""
        other = MemberView(self._prefix)
        other.replace(listing)
        mine = {k: (m.address, dict(m.metadata)) for k, m in self._members.items()}
        theirs = {k: (m.address, dict(m.metadata)) for k, m in other._members.items()}
        return mine == theirs
