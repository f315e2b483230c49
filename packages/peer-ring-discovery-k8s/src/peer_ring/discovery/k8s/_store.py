"""The list+watch state machine of one resource kind, without I/O.

This is the part of a client-go *reflector* that decides things: it holds the objects
last listed or watched, the ``resourceVersion`` to resume from, and classifies each watch
event. The I/O loop in :mod:`._reflector` feeds it list results and events and acts on
the returned :class:`Outcome`. Keeping it pure lets the unit tests drive every branch
(bookmarks, 410, out-of-order deletes) with plain dictionaries.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from peer_ring.discovery.k8s._members import Obj


class Outcome(enum.Enum):
    """What the I/O loop must do after an event was applied."""

    #: The object set changed: recompute the members.
    CHANGED = "changed"
    #: Only the resourceVersion moved (BOOKMARK, or an unknown event type).
    UNCHANGED = "unchanged"
    #: 410 Gone: the resourceVersion is too old (etcd compacted it, or it fell out of the
    #: API server's watch cache). Events were lost: list again.
    EXPIRED = "expired"
    #: The server reported another error inside the watch stream: watch again (after a
    #: backoff) from the last resourceVersion.
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class StatusError:
    """A ``Status`` object sent by the API server (as an ERROR event or an HTTP body)."""

    code: int
    reason: str
    message: str

    @classmethod
    def from_obj(cls, obj: Obj | None, http_status: int = 0) -> StatusError:
        """Read a ``metav1.Status``; tolerant of missing fields."""
        obj = obj or {}
        return cls(
            code=int(obj.get("code") or http_status or 0),
            reason=str(obj.get("reason") or ""),
            message=str(obj.get("message") or ""),
        )

    @property
    def expired(self) -> bool:
        """Whether this is "resourceVersion too old" (410 Gone / reason Expired)."""
        return self.code == 410 or self.reason in ("Expired", "Gone")


def _name(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _resource_version(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


class ObjectStore:
    """The objects of one kind in one namespace, and where the watch resumes from."""

    def __init__(self) -> None:
        self._objects: dict[str, Obj] = {}
        self._resource_version = ""
        #: The last ERROR status seen in a watch stream (for logging by the I/O loop).
        self.last_error: StatusError | None = None

    @property
    def resource_version(self) -> str:
        """The resourceVersion to resume watching from ("" before the first list)."""
        return self._resource_version

    @property
    def objects(self) -> Mapping[str, Obj]:
        """The current objects by name (read-only view)."""
        return self._objects

    def replace(self, items: Iterable[Obj], resource_version: str) -> None:
        """Install the result of a LIST.

        A relist replaces everything: objects deleted while the watch was down (whose
        DELETED events were compacted away) disappear here, which is why relisting after
        410 loses nothing.
        """
        self._objects = {_name(o): o for o in items}
        self._resource_version = resource_version

    def apply(self, event: Mapping[str, Any]) -> Outcome:
        """Apply one watch event (``{"type": ..., "object": ...}``)."""
        kind = event.get("type")
        obj: Obj = event.get("object") or {}
        if kind == "ERROR":
            self.last_error = StatusError.from_obj(obj)
            return Outcome.EXPIRED if self.last_error.expired else Outcome.ERROR
        rv = _resource_version(obj)
        if kind == "BOOKMARK":
            # A bookmark carries only metadata.resourceVersion: progress without changes,
            # so that a reconnect after a quiet hour resumes from a recent version
            # instead of one the server compacted long ago (and a 410 + full relist).
            if rv:
                self._resource_version = rv
            return Outcome.UNCHANGED
        name = _name(obj)
        if kind in ("ADDED", "MODIFIED"):
            self._objects[name] = obj
        elif kind == "DELETED":
            self._objects.pop(name, None)
        else:
            # Unknown event type: newer servers may add some; skip but keep progress.
            if rv:
                self._resource_version = rv
            return Outcome.UNCHANGED
        if rv:
            self._resource_version = rv
        # Whether the *members* changed is decided later, on the computed snapshot
        # (most pod status updates change nothing that discovery reads).
        return Outcome.CHANGED
