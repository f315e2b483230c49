"""Records: one stored value with its version, expiry and tombstone flag; reconciliation.

A :class:`Record` is what replicas store, exchange and compare. Deletes are records too
(tombstones, Dynamo section 4.4): a delete must beat the older value on every replica,
including one that only hears about the delete later, so it has to carry a version.

Two records of the same key with the same version are the same write: versions are unique
per write (HLC timestamp + writer id), which is what lets every merge be "keep the higher
version" and lets anti-entropy compare ``(key, version)`` instead of values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

from peer_ring.kv._versions import Version


class Record(NamedTuple):
    """One version of one key's value.

    Attributes:
        value: the stored bytes (``b""`` for a tombstone).
        version: who wrote it and when; the higher version wins (last writer wins).
        expires: absolute wall-clock time (seconds since the epoch) after which the value
            is gone; ``0.0`` means it never expires.
        tombstone: ``True`` for a delete marker (or a value that has expired).
        encoded: ``True`` when ``value`` is a codec encoding of a non-``bytes`` object,
            ``False`` when it is raw bytes from the user (see :mod:`peer_ring.kv._codec`).
    """

    value: bytes
    version: Version
    expires: float = 0.0
    tombstone: bool = False
    encoded: bool = False

    @classmethod
    def deleted(cls, version: Version) -> Record:
        """A tombstone: the record a delete writes."""
        return cls(b"", version, 0.0, True, False)

    def is_expired(self, now: float) -> bool:
        """Whether the value has a TTL that has passed at wall time ``now``."""
        return self.expires != 0.0 and self.expires <= now

    def is_live(self, now: float) -> bool:
        """Whether the record holds a value at wall time ``now`` (not deleted, not expired)."""
        return not self.tombstone and not (self.expires != 0.0 and self.expires <= now)

    def collect_at(self, grace: float) -> float:
        """When a dead record may be forgotten: its time of death plus ``grace`` seconds.

        The time of death is the expiry time for an expired value and the version's wall
        time for a delete. Both come from the record itself, not from when a replica
        received it, so every replica collects the same tombstone at about the same moment
        and anti-entropy digests agree.
        """
        return (self.expires if self.expires != 0.0 else self.version.wall_time) + grace


#: Chooses the winner among several replicas' records of one key:
#: ``resolver(key, records) -> record``. ``records`` holds distinct versions, newest first,
#: tombstones included (a resolver that ignores them resurrects deleted keys).
Resolver = Callable[[bytes, list[Record]], Record]


def latest(key: bytes, records: list[Record]) -> Record:
    """The default resolver: the record with the highest version (last writer wins)."""
    return max(records, key=_version_of)


def _version_of(record: Record) -> Version:
    return record.version


def reconcile(
    key: bytes, records: Iterable[Record | None], resolver: Resolver | None = None
) -> Record | None:
    """Reconcile the records several replicas returned for ``key``.

    ``None`` entries (replicas without the key) are ignored. When every replica has the
    same version it is returned without calling ``resolver``; otherwise ``resolver``
    (default :func:`latest`) receives the distinct records, newest first.

    A custom resolver that returns anything but the newest record must give it a version
    newer than all of them (for example ``hlc.now()`` after ``hlc.update(newest)``) if the
    result is to be written back: replicas only ever accept a higher version.

    Returns:
        The winning record, or ``None`` when no replica had one.

    Raises:
        TypeError: ``resolver`` returned something other than a :class:`Record`.
    """
    distinct: dict[Version, Record] = {}
    for record in records:
        if record is not None:
            distinct.setdefault(record.version, record)
    if not distinct:
        return None
    if len(distinct) == 1:
        return next(iter(distinct.values()))
    candidates = sorted(distinct.values(), key=_version_of, reverse=True)
    if resolver is None:
        return candidates[0]
    result = resolver(key, candidates)
    if not isinstance(result, Record):
        raise TypeError(f"resolver returned {type(result).__name__}, expected Record")
    return result
