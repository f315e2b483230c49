"""Configuration enums: where a key is decided, and what to do when its owner is away."""

from __future__ import annotations

import enum


class Mode(enum.Enum):
    """Where a key is decided.

    ``OWNER`` (default): by the key's owner, the head of its preference list, exactly.
    ``GLOBAL``: by each node from a local copy of the key's state, reconciled with the
    owner every ``sync_interval``; for hot keys, with a bounded over-admission.
    """

    OWNER = "owner"
    GLOBAL = "global"


class FailPolicy(enum.Enum):
    """What a hit gets when the key's owner cannot be reached in time.

    ``LOCAL_ESTIMATE`` (default): decide on this node alone against the limit divided by
    the number of nodes (each node's fair share), so a partitioned cluster as a whole
    stays near the limit. ``FAIL_OPEN``: admit. ``FAIL_CLOSED``: deny. ``RAISE``: raise
    :class:`~peer_ring.ratelimit.OwnerUnavailableError`.
    """

    LOCAL_ESTIMATE = "local-estimate"
    FAIL_OPEN = "fail-open"
    FAIL_CLOSED = "fail-closed"
    RAISE = "raise"
