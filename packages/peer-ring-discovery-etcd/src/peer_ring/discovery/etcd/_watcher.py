"""List, then watch from the listed revision + 1; recover from every way that breaks.

* **Compaction**: the revision to resume from is gone -> list again, watch from there.
* **Broken stream / etcd down or restarting**: keep the view, mark it stale, retry with
  backoff, resume the watch from the view's revision + 1 (nothing is missed: etcd replays
  every change since). No departure is reported while etcd cannot be asked.
* **Silent watch** (a stream that stays open but delivers nothing: a black-holed
  connection, a watch the server cancelled, a server-side bug): every ``resync_interval``
  seconds without an event the prefix is listed again; a listing that disagrees with the
  view replaces it and the watch is reopened. The client library hides etcd's progress
  notifications, so a bounded re-list is the check (see the README).
* **etcd restored or wiped** (its revision went backwards): the listing wins.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from peer_ring.discovery.etcd._backoff import Backoff
from peer_ring.discovery.etcd._client import EtcdClient, WatchStream
from peer_ring.discovery.etcd._errors import (
    EtcdCompactedError,
    EtcdError,
    EtcdRejectedError,
    EtcdUnavailableError,
)
from peer_ring.discovery.etcd._view import MemberView

logger = logging.getLogger(__name__)


@dataclass
class WatchStats:
    """Counters of the list + watch loop.

    Attributes:
        lists: listings of the prefix (initial, after compaction, resyncs).
        watches: watches opened (etcd confirmed them).
        events: changes received through watches.
        compactions: watches refused because their revision was compacted.
        errors: failed calls (each retried).
        resyncs: periodic re-lists of a quiet watch (attempted; a failed one counts as an
            error too and reopens the watch).
        repairs: re-lists that disagreed with the view (a missed change, a silent watch
            or a restored etcd) and replaced it.
        outages: times the view became stale.
    """

    lists: int = 0
    watches: int = 0
    events: int = 0
    compactions: int = 0
    errors: int = 0
    resyncs: int = 0
    repairs: int = 0
    outages: int = 0


class Watcher:
    """Keeps a :class:`MemberView` of ``prefix`` up to date.

    Args:
        client: the etcd adapter.
        prefix: the normalized key prefix.
        on_change: called (synchronously) after each change of the view.
        resync_interval: seconds without an event after which the prefix is listed again.
        backoff: delays between failed attempts.
    """

    def __init__(
        self,
        client: EtcdClient,
        prefix: str,
        *,
        on_change: Callable[[MemberView], None],
        resync_interval: float,
        backoff: Backoff,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._prefix_bytes = prefix.encode()
        self._on_change = on_change
        self._resync_interval = resync_interval
        self._backoff = backoff
        self.view = MemberView(prefix)
        self.stats = WatchStats()
        self.stale_since: float | None = None
        self._need_list = True

    @property
    def stale(self) -> bool:
        """Whether etcd could not be asked since the last failure (the view may be old)."""
        return self.stale_since is not None

    async def list_once(self) -> None:
        """List the prefix and adopt the listing.

        Raises:
            EtcdError: etcd failed the call.
        """
        listing = await self._client.list_prefix(self._prefix_bytes)
        self.stats.lists += 1
        self._need_list = False
        if self.view.replace(listing):
            self._on_change(self.view)

    async def run(self) -> None:
        """Watch until cancelled; never gives up."""
        while True:
            try:
                await self._step()
            except Exception as error:
                # A bug, not an etcd failure (those are EtcdError): log it loudly, mark the
                # view stale and go on, rather than let the loop die silently.
                logger.exception("etcd discovery: unexpected error in the watch loop")
                self._need_list = True
                await self._failed(EtcdError(f"unexpected {type(error).__name__}"))

    async def _step(self) -> None:
        try:
            if self._need_list:
                await self.list_once()
            stream = await self._client.watch(self._prefix_bytes, self.view.revision + 1)
        except EtcdCompactedError as error:
            self.stats.compactions += 1
            logger.info(
                "etcd discovery: revision %d compacted (oldest kept: %d); listing again",
                self.view.revision + 1,
                error.compact_revision,
            )
            self._need_list = True
            return
        except EtcdError as error:
            await self._failed(error)
            return
        self.stats.watches += 1
        self._recovered()
        try:
            await self._consume(stream)
        except EtcdCompactedError as error:
            self.stats.compactions += 1
            logger.info("etcd discovery: watch compacted (%s); listing again", error)
            self._need_list = True
        except EtcdError as error:
            await self._failed(error)
        finally:
            await stream.cancel(self._client.request_timeout)

    async def _consume(self, stream: WatchStream) -> None:
        """Apply the stream's events; return when the watch must be reopened."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._resync_interval
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    event = await stream.next()
            except TimeoutError:
                if await self._resync():
                    return  # the watch missed something: reopen it after the listing
                deadline = loop.time() + self._resync_interval
                continue
            self.stats.events += 1
            deadline = loop.time() + self._resync_interval
            if self.view.apply([event]):
                self._on_change(self.view)

    async def _resync(self) -> bool:
        """List again; returns True when the listing disagreed (and replaced the view)."""
        self.stats.resyncs += 1
        listing = await self._client.list_prefix(self._prefix_bytes)
        self.stats.lists += 1
        if listing.revision >= self.view.revision and self.view.same_members(listing):
            return False
        self.stats.repairs += 1
        logger.warning(
            "etcd discovery: a re-list at revision %d disagrees with the watched view "
            "(revision %d); adopting it and reopening the watch",
            listing.revision,
            self.view.revision,
        )
        self.view.replace(listing)
        self._on_change(self.view)
        return True

    def _recovered(self) -> None:
        self._backoff.reset()
        if self.stale_since is not None:
            logger.warning(
                "etcd discovery: etcd answers again after %.1f s; watching from revision %d",
                time.monotonic() - self.stale_since,
                self.view.revision + 1,
            )
            self.stale_since = None

    async def _failed(self, error: EtcdError) -> None:
        self.stats.errors += 1
        if self.stale_since is None:
            self.stale_since = time.monotonic()
            self.stats.outages += 1
            logger.warning(
                "etcd discovery: %s; keeping the last view of %d members (stale) until etcd "
                "answers",
                error,
                len(self.view.members),
            )
        elif not isinstance(error, (EtcdUnavailableError, EtcdRejectedError)):
            logger.info("etcd discovery: %s", error)
        await asyncio.sleep(self._backoff.next())
