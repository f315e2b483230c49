"""``EtcdDiscovery``: members registered under an etcd prefix, each under its own lease."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

from peer_ring.core import InvalidArgumentError, Member
from peer_ring.discovery.etcd._backoff import Backoff
from peer_ring.discovery.etcd._client import EtcdClient
from peer_ring.discovery.etcd._errors import (
    EtcdDiscoveryError,
    EtcdError,
    EtcdRejectedError,
)
from peer_ring.discovery.etcd._lease import LeaseState
from peer_ring.discovery.etcd._members import (
    DEFAULT_PREFIX,
    check_address,
    check_metadata,
    encode_member,
    member_key,
    normalize_prefix,
    snapshot_key,
)
from peer_ring.discovery.etcd._registrar import Registrar, RegistrationStats
from peer_ring.discovery.etcd._view import MemberView
from peer_ring.discovery.etcd._watcher import Watcher, WatchStats

logger = logging.getLogger(__name__)

#: Default lease TTL (seconds). Keep-alives go every TTL/3 = 5 s, so a node whose event loop
#: stalls 5 s right before one still renews about 10 s into a 15 s lease, and a slow etcd
#: shutdown or leader change (a few seconds of failed keep-alives, retried every 0.5 s)
#: leaves 10 s of margin. The price: a killed node leaves the etcd view after up to 15 s
#: (the core's failure detector routes around it much sooner).
DEFAULT_TTL = 15


@dataclass(frozen=True)
class EtcdDiscoveryStatus:
    """A point-in-time report of the discovery (``EtcdDiscovery.status()``).

    Attributes:
        stale: etcd could not be asked since its last failure: the member set is the last
            one seen and departures are not being reported.
        stale_for: seconds the view has been stale (0 when fresh).
        registered: this node's key is in etcd under a lease etcd last confirmed.
        lease_id: that lease (None while re-registering).
        lease_state: ``"registered"``, ``"expired"`` or ``"unregistered"``.
        revision: the etcd revision the view reflects.
        endpoint: the etcd endpoint in use.
        members: how many members the last snapshot has.
        watch: counters of the list + watch loop.
        registration: counters of the registration loop.
    """

    stale: bool
    stale_for: float
    registered: bool
    lease_id: int | None
    lease_state: str
    revision: int
    endpoint: str
    members: int
    watch: WatchStats
    registration: RegistrationStats


class EtcdDiscovery:
    """Discovers peer-ring members through etcd v3 (implements ``Discovery``).

    Each node writes ``<prefix><host:port>`` attached to its own lease and keeps the lease
    alive; every node lists the prefix, then watches it from the listed revision + 1. A
    crashed node's key disappears when its lease expires (``ttl`` seconds after its last
    keep-alive); a stopped node revokes its lease and disappears at once.

    This node is always in its own snapshots. ``watch()`` yields only when the member set
    or a member's metadata changed. When etcd cannot be reached the last member set stays
    (:attr:`stale` turns True; no departures are reported because etcd is down), and every
    loop retries until etcd answers again.

    Args:
        self_address: this node's peer address, ``host:port``: its identity in the ring and
            the key it registers.
        endpoints: etcd endpoints, ``host:port`` or ``http://host:port``, a list or a
            comma-separated string.
        prefix: key prefix shared by the cluster's members (one prefix per cluster).
        metadata: this node's labels (``Member.metadata``), stored in its value.
        ttl: the lease TTL in seconds (see :data:`DEFAULT_TTL`).
        keepalive_timeout: the deadline of each keep-alive request, in seconds.
        request_timeout: the deadline of every other etcd call, in seconds.
        startup_timeout: how long ``start()`` retries an unreachable etcd before failing.
        resync_interval: seconds without a watch event after which the prefix is listed
            again (catches a watch that went silent).
        username: etcd user, when etcd has authentication enabled.
        password: that user's password.
        client: an :class:`EtcdClient` to use instead of one built from ``endpoints``
            (closed by ``stop()``).

    Raises:
        InvalidArgumentError: bad prefix, address, metadata, endpoints or timings.
    """

    def __init__(
        self,
        *,
        self_address: str,
        endpoints: str | Sequence[str] = "127.0.0.1:2379",
        prefix: str = DEFAULT_PREFIX,
        metadata: Mapping[str, str] | None = None,
        ttl: int = DEFAULT_TTL,
        keepalive_timeout: float = 2.0,
        request_timeout: float = 5.0,
        startup_timeout: float = 10.0,
        resync_interval: float = 15.0,
        username: str | None = None,
        password: str | None = None,
        client: EtcdClient | None = None,
    ) -> None:
        self._prefix = normalize_prefix(prefix)
        self._self_address = check_address(self_address)
        self._self_member = Member(self_address, check_metadata(metadata or {}))
        if not isinstance(ttl, int) or ttl < 2:
            raise InvalidArgumentError(f"ttl must be a whole number of seconds >= 2, got {ttl!r}")
        if not 0 < keepalive_timeout < ttl:
            raise InvalidArgumentError("keepalive_timeout must be positive and below the ttl")
        for name, value in (
            ("request_timeout", request_timeout),
            ("startup_timeout", startup_timeout),
            ("resync_interval", resync_interval),
        ):
            if not value > 0:
                raise InvalidArgumentError(f"{name} must be positive, got {value!r}")
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e.strip()]
        try:
            self._client = client or EtcdClient(
                endpoints, request_timeout=request_timeout, username=username, password=password
            )
        except ValueError as error:
            raise InvalidArgumentError(str(error)) from None
        self._ttl = ttl
        self._startup_timeout = startup_timeout
        self._key = member_key(self._prefix, self._self_address)
        self._registrar = Registrar(
            self._client,
            self._key,
            encode_member(self._self_member),
            ttl=ttl,
            keepalive_timeout=keepalive_timeout,
            retry_delay=min(0.5, keepalive_timeout),
            backoff=Backoff(initial=0.2, maximum=2.0),
        )
        self._watcher = Watcher(
            self._client,
            self._prefix,
            on_change=self._on_change,
            resync_interval=resync_interval,
            backoff=Backoff(initial=0.2, maximum=2.0),
        )
        self._members: frozenset[Member] = frozenset({self._self_member})
        self._snapshot_key = snapshot_key(self._members)
        self._version = 0
        self._started_version = 0
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._stopped = False

    @property
    def self_address(self) -> str:
        """``host:port`` of this node: its identity in the ring and its key in etcd."""
        return self._self_address

    @property
    def prefix(self) -> str:
        """The key prefix (normalized to end with ``/``)."""
        return self._prefix

    @property
    def ttl(self) -> int:
        """The lease TTL asked for, in seconds."""
        return self._ttl

    @property
    def members(self) -> frozenset[Member]:
        """The current member set (the last snapshot)."""
        return self._members

    @property
    def stale(self) -> bool:
        """Whether the member set may be out of date because etcd cannot be reached."""
        return self._watcher.stale

    def status(self) -> EtcdDiscoveryStatus:
        """Staleness, lease and counters, for health checks and metrics."""
        since = self._watcher.stale_since
        tracker = self._registrar.tracker
        return EtcdDiscoveryStatus(
            stale=since is not None,
            stale_for=0.0 if since is None else time.monotonic() - since,
            registered=tracker.state is LeaseState.REGISTERED,
            lease_id=tracker.lease_id,
            lease_state=tracker.state.value,
            revision=self._watcher.view.revision,
            endpoint=self._client.endpoint,
            members=len(self._members),
            watch=self._watcher.stats,
            registration=self._registrar.stats,
        )

    def _on_change(self, view: MemberView) -> None:
        found = view.members
        if self._key not in found and self._started and not self._stopped:
            # Our key is gone: the lease expired (a long stall, etcd unreachable for a
            # TTL) or someone deleted it. Find out now rather than at the next keep-alive.
            self._registrar.check_now(key_missing=True)
        by_address = {m.address: m for m in found.values()}
        # This node is always a member of its own view, with its own metadata: etcd may
        # not list it (before registering, while re-registering).
        by_address[self._self_address] = self._self_member
        members = frozenset(by_address.values())
        key = snapshot_key(members)
        if key == self._snapshot_key:
            return
        added = sorted({m.address for m in members} - {m.address for m in self._members})
        removed = sorted({m.address for m in self._members} - {m.address for m in members})
        logger.info("etcd discovery: %d members (+%s -%s)", len(members), added, removed)
        self._members = members
        self._snapshot_key = key
        self._version += 1
        # Wake the watcher: swap the event so the next wait blocks until the next change.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def start(self) -> frozenset[Member]:
        """Register this node, list the members, start watching; return the member set.

        Raises:
            EtcdDiscoveryError: etcd unreachable for ``startup_timeout`` seconds, or it
                refused the calls (authentication, permissions); the message says which.
        """
        if self._started:
            return self._members
        if self._stopped:
            raise EtcdDiscoveryError("etcd discovery was stopped; create a new one")
        deadline = time.monotonic() + self._startup_timeout
        backoff = Backoff(initial=0.2, maximum=1.0)
        while True:
            try:
                if self._registrar.tracker.needs_registration:
                    await self._registrar.register()
                await self._watcher.list_once()
                break
            except EtcdRejectedError as error:
                await self._client.close()
                raise EtcdDiscoveryError(f"etcd discovery cannot start: {error}") from error
            except EtcdError as error:
                if time.monotonic() + backoff.maximum > deadline:
                    await self._client.close()
                    raise EtcdDiscoveryError(
                        f"etcd discovery cannot start: no answer from etcd at "
                        f"{self._client.endpoint} within {self._startup_timeout:g} s "
                        f"(last error: {error}); check the endpoints and that etcd runs"
                    ) from error
                await asyncio.sleep(backoff.next())
        self._started = True
        self._started_version = self._version
        self._tasks = [
            asyncio.create_task(self._registrar.run(), name="peer-ring-etcd-keepalive"),
            asyncio.create_task(self._watcher.run(), name="peer-ring-etcd-watch"),
        ]
        logger.info(
            "etcd discovery started: prefix %r at %s, self %s, lease TTL %d s, %d members",
            self._prefix,
            self._client.endpoint,
            self._self_address,
            self._ttl,
            len(self._members),
        )
        return self._members

    async def watch(self) -> AsyncIterator[frozenset[Member]]:
        """Yield the member set each time it changes after ``start()``, until ``stop()``."""
        seen = self._started_version
        while not self._stopped:
            if self._version != seen:
                seen = self._version
                yield self._members
                continue
            await self._changed.wait()

    async def stop(self) -> None:
        """Stop the loops, revoke the lease (the key goes at once), close; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._changed.set()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Also when start() never finished: a start cancelled (a SIGTERM while joining) or
        # failed after the registration left a key on a live lease; deregister() is a no-op
        # when no lease was granted.
        await self._registrar.deregister(self._client.request_timeout)
        await self._client.close()
        logger.info("etcd discovery stopped: %s", self._self_address)
