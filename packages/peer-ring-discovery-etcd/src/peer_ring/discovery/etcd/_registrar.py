"""This node's registration: its member key under a lease, kept alive for as long as it runs.

The loop never gives up (a keep-alive loop that gives up is the classic registry bug: the
node runs on, invisible to its peers). Each keep-alive is one request with its own
deadline; a failure is retried after ``retry_delay``; etcd's answer ``TTL <= 0`` starts a
re-registration at once (grant a new lease, write the key again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from peer_ring.discovery.etcd._backoff import Backoff
from peer_ring.discovery.etcd._client import EtcdClient
from peer_ring.discovery.etcd._errors import EtcdError
from peer_ring.discovery.etcd._lease import LeaseTracker

logger = logging.getLogger(__name__)


@dataclass
class RegistrationStats:
    """Counters of the registration loop.

    Attributes:
        registrations: leases granted and member keys written (the first one included).
        keepalives: keep-alives etcd answered with a live lease.
        keepalive_failures: keep-alives without an answer (retried).
        expirations: keep-alives answered ``TTL <= 0`` (the lease was gone).
        last_reregistration_s: seconds from the first keep-alive answer that found the
            lease gone to the key being written again (None until it happened).
    """

    registrations: int = 0
    keepalives: int = 0
    keepalive_failures: int = 0
    expirations: int = 0
    last_reregistration_s: float | None = None


class Registrar:
    """Keeps ``key = value`` in etcd under a lease of ``ttl`` seconds.

    Args:
        client: the etcd adapter.
        key: this node's member key.
        value: its encoded value.
        ttl: the lease TTL asked for, in seconds.
        keepalive_timeout: the deadline of each keep-alive request.
        retry_delay: delay before retrying a failed keep-alive.
        backoff: delays between failed registrations.
    """

    def __init__(
        self,
        client: EtcdClient,
        key: bytes,
        value: bytes,
        *,
        ttl: int,
        keepalive_timeout: float,
        retry_delay: float,
        backoff: Backoff,
    ) -> None:
        self._client = client
        self._key = key
        self._value = value
        self._ttl = ttl
        self._keepalive_timeout = keepalive_timeout
        self._backoff = backoff
        self.tracker = LeaseTracker(retry_delay=retry_delay)
        self.stats = RegistrationStats()
        self._wake = asyncio.Event()
        self._lost_at: float | None = None
        self._key_missing = False

    @property
    def lease_id(self) -> int | None:
        """The current lease, when registered."""
        return self.tracker.lease_id

    def check_now(self, *, key_missing: bool = False) -> None:
        """Send a keep-alive now.

        Args:
            key_missing: the watch saw this node's key deleted. If the lease still lives
                (someone deleted the key by hand), the key is written again under it.
        """
        self._key_missing |= key_missing
        self._wake.set()

    async def register(self) -> None:
        """Grant a lease and write the key under it.

        Raises:
            EtcdError: etcd failed either call (a granted lease is revoked, best effort).
        """
        lease_id, ttl = await self._client.grant(self._ttl)
        try:
            await self._client.put(self._key, self._value, lease_id)
        except EtcdError:
            with contextlib.suppress(EtcdError):
                await self._client.revoke(lease_id)
            raise
        self.tracker.on_registered(lease_id, ttl, time.monotonic())
        self._key_missing = False
        self.stats.registrations += 1
        if self._lost_at is not None:
            self.stats.last_reregistration_s = time.monotonic() - self._lost_at
            logger.warning(
                "etcd discovery: re-registered %s under lease %x, %.3f s after the old lease "
                "was found gone",
                self._key.decode(errors="replace"),
                lease_id,
                self.stats.last_reregistration_s,
            )
            self._lost_at = None
        else:
            logger.info(
                "etcd discovery: registered %s under lease %x (TTL %d s)",
                self._key.decode(errors="replace"),
                lease_id,
                ttl,
            )

    async def run(self) -> None:
        """Keep the registration alive until cancelled; never gives up."""
        while True:
            try:
                await self._step()
            except Exception:
                # A bug, not an etcd failure (those are EtcdError): log it loudly, but keep
                # the node registered rather than let the loop die silently.
                logger.exception("etcd discovery: unexpected error in the registration loop")
                await self._sleep(self._backoff.next())

    async def _step(self) -> None:
        if self.tracker.needs_registration:
            try:
                await self.register()
                self._backoff.reset()
            except EtcdError as error:
                delay = self._backoff.next()
                logger.warning(
                    "etcd discovery: registration failed (%s); retrying in %.1f s",
                    error,
                    delay,
                )
                await self._sleep(delay)
            return
        await self._sleep(self.tracker.keepalive_delay(time.monotonic()))
        await self._keepalive_once()

    async def _keepalive_once(self) -> None:
        lease_id = self.tracker.lease_id
        if lease_id is None:
            return
        try:
            ttl = await self._client.keep_alive(lease_id, self._keepalive_timeout)
        except EtcdError as error:
            self.tracker.on_failure()
            self.stats.keepalive_failures += 1
            # Once per outage at warning level, then debug: a down etcd fails every retry.
            level = logging.WARNING if self.tracker.failures == 1 else logging.DEBUG
            logger.log(level, "etcd discovery: keep-alive of lease %x failed: %s", lease_id, error)
            return
        if self.tracker.on_keepalive(ttl, time.monotonic()):
            self.stats.keepalives += 1
            logger.debug("etcd discovery: lease %x kept alive, TTL %d s", lease_id, ttl)
            if self._key_missing:
                await self._restore_key(lease_id)
            return
        self.stats.expirations += 1
        self._lost_at = time.monotonic()
        logger.warning(
            "etcd discovery: lease %x expired (keep-alive answered TTL %d); registering again",
            lease_id,
            ttl,
        )

    async def _restore_key(self, lease_id: int) -> None:
        try:
            await self._client.put(self._key, self._value, lease_id)
        except EtcdError as error:
            logger.warning("etcd discovery: could not write the member key again: %s", error)
            return
        self._key_missing = False
        logger.warning(
            "etcd discovery: member key %s was deleted under a live lease; written again",
            self._key.decode(errors="replace"),
        )

    async def _sleep(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or less when :meth:`check_now` is called."""
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
        self._wake.clear()

    async def deregister(self, timeout: float) -> None:
        """Revoke the lease (deleting the key at once); best effort within ``timeout``."""
        lease_id = self.tracker.lease_id
        self.tracker.on_unregistered()
        if lease_id is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await self._client.revoke(lease_id)
        except (EtcdError, TimeoutError) as error:
            logger.info(
                "etcd discovery: could not revoke lease %x (%s); the key expires with its TTL",
                lease_id,
                error,
            )
