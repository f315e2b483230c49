"""The lease state machine of this node's registration (pure: times are passed in).

::

    UNREGISTERED --grant+put ok--> REGISTERED --keep-alive TTL > 0--> REGISTERED
         ^                              |
         |                              +--keep-alive TTL <= 0--> EXPIRED --> (re-register)
         +------------------------------+--keep-alive failed--> REGISTERED, retry soon

A failed keep-alive (etcd unreachable, deadline passed) proves nothing about the lease:
it may still be alive, and etcd extends every lease by its TTL when it restarts. So the
tracker keeps the lease and retries quickly; only etcd's own answer ``TTL <= 0`` ("this
lease does not exist") makes it re-register. Keep-alives are sent every ``ttl / 3`` after
the last confirmation, like etcd's own client, so two can be missed before the lease ends.
"""

from __future__ import annotations

import enum
import math


class LeaseState(enum.Enum):
    """Where the registration stands."""

    UNREGISTERED = "unregistered"
    REGISTERED = "registered"
    EXPIRED = "expired"


#: Fraction of the TTL between keep-alives (etcd's clientv3 uses 1/3 as well).
KEEPALIVE_FRACTION = 1 / 3


class LeaseTracker:
    """Decides when to keep the lease alive and when to register again.

    Args:
        retry_delay: the delay before retrying a failed keep-alive (short: after a lost
            lease, re-registration should follow within about a second of etcd answering).
    """

    def __init__(self, retry_delay: float = 0.5) -> None:
        if retry_delay <= 0:
            raise ValueError("retry_delay must be positive")
        self._retry_delay = retry_delay
        self.state = LeaseState.UNREGISTERED
        self.lease_id: int | None = None
        self.granted_ttl = 0
        self.confirmed_at = -math.inf
        self.confirmed_ttl = 0
        self.failures = 0
        self.expirations = 0

    def on_registered(self, lease_id: int, ttl: int, now: float) -> None:
        """A lease was granted and the member key written under it."""
        self.state = LeaseState.REGISTERED
        self.lease_id = lease_id
        self.granted_ttl = ttl
        self.confirmed_at = now
        self.confirmed_ttl = ttl
        self.failures = 0

    def on_keepalive(self, ttl: int, now: float) -> bool:
        """etcd answered a keep-alive with ``ttl``; returns whether the lease lives.

        ``ttl <= 0`` means etcd no longer has the lease (it expired or was revoked): the
        member key is gone with it and the node must register again.
        """
        self.failures = 0
        if ttl <= 0:
            self.state = LeaseState.EXPIRED
            self.lease_id = None
            self.expirations += 1
            return False
        self.confirmed_at = now
        self.confirmed_ttl = ttl
        return True

    def on_failure(self) -> None:
        """A keep-alive got no answer (unreachable, deadline passed)."""
        self.failures += 1

    def on_unregistered(self) -> None:
        """The registration was given up (stop, or a failed re-registration)."""
        self.state = LeaseState.UNREGISTERED
        self.lease_id = None

    @property
    def needs_registration(self) -> bool:
        """Whether the next step is grant + put rather than a keep-alive."""
        return self.state is not LeaseState.REGISTERED

    def presumed_expired(self, now: float) -> bool:
        """Whether the lease has outlived its last confirmed TTL (a local estimate)."""
        return now >= self.confirmed_at + self.confirmed_ttl

    def keepalive_delay(self, now: float) -> float:
        """Seconds until the next keep-alive should be sent."""
        if self.failures:
            return self._retry_delay
        due = self.confirmed_at + self.confirmed_ttl * KEEPALIVE_FRACTION
        return max(0.0, due - now)
