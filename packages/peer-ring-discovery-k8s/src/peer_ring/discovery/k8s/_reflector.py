"""The list+watch loop: keeps an :class:`ObjectStore` in step with the API server.

The algorithm of client-go's reflector, which every Kubernetes controller relies on:

1. LIST (a consistent read) and remember the list's ``resourceVersion``.
2. WATCH from that version with bookmarks; apply each event; remember each event's
   version. The server ends a watch after ``timeoutSeconds``; watch again from the last
   version: nothing is missed and nothing replayed twice.
3. 410 Gone (the version was compacted in etcd or fell out of the watch cache): events
   were lost, so LIST again and replace the store wholesale.
4. Connection refused/reset, 5xx, 429, silence past the read timeout (API server
   restarting, load balancer dropping idle connections): retry with exponential backoff
   and jitter, resuming from the last version.

Every change to the store is reported through ``on_change`` with the full object set, so
the consumer recomputes a complete snapshot: duplicate or late events cannot corrupt it.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from peer_ring.core import Clock
from peer_ring.discovery.k8s._api import ApiStatusError, KubeApi, ResourceKind
from peer_ring.discovery.k8s._backoff import Backoff
from peer_ring.discovery.k8s._errors import KubernetesDiscoveryError, KubernetesForbiddenError
from peer_ring.discovery.k8s._members import Obj
from peer_ring.discovery.k8s._store import ObjectStore, Outcome

logger = logging.getLogger(__name__)

#: The verbs discovery needs on its resource (what deploy/rbac.yaml grants).
REQUIRED_VERBS = ("list", "watch")

#: Errors after which the same request may succeed later.
_TRANSIENT = (aiohttp.ClientError, TimeoutError, OSError, ValueError)


@dataclass(slots=True)
class WatchStats:
    """Counters of the list+watch loop, for metrics and tests.

    Attributes:
        lists: completed LISTs (1 at start, +1 per relist).
        watches: watch requests the server accepted.
        events: ADDED/MODIFIED/DELETED events applied.
        bookmarks: BOOKMARK events received.
        expired: 410 Gone answers (each followed by a relist).
        errors: failed attempts (connection errors, 5xx, 403...), each followed by a backoff.
        last_error: the message of the most recent failure ("" if none yet).
        resource_version: where the next watch resumes from.
    """

    lists: int = 0
    watches: int = 0
    events: int = 0
    bookmarks: int = 0
    expired: int = 0
    errors: int = 0
    last_error: str = ""
    resource_version: str = ""


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ApiStatusError):
        # 410 on a LIST means a `continue` token expired mid-pagination: list again.
        return exc.status.code >= 500 or exc.status.code in (410, 429)
    return isinstance(exc, _TRANSIENT)


class Reflector:
    """Lists and watches one resource kind, in one namespace, with one label selector.

    Args:
        api: the API adapter.
        kind: what to watch (EndpointSlices or Pods).
        namespace: where.
        label_selector: which objects.
        on_change: called with every object (by name) after the store changed.
        clock: time source for backoff sleeps.
        backoff: retry delays.
        watch_timeout: each watch asks the server to close it after a duration drawn in
            ``[watch_timeout, 2 * watch_timeout]`` seconds (spread so that pods do not
            reconnect in lockstep).
        idle_timeout: seconds without a byte on a watch before the connection is
            considered dead; default ``2 * watch_timeout + 30``.
        rng: randomness for the watch durations.
    """

    def __init__(
        self,
        api: KubeApi,
        kind: ResourceKind,
        namespace: str,
        label_selector: str,
        *,
        on_change: Callable[[Mapping[str, Obj]], None],
        clock: Clock,
        backoff: Backoff,
        watch_timeout: float = 300.0,
        idle_timeout: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._api = api
        self._kind = kind
        self._namespace = namespace
        self._selector = label_selector
        self._on_change = on_change
        self._clock = clock
        self._backoff = backoff
        self._watch_timeout = max(1.0, watch_timeout)
        self._idle_timeout = idle_timeout or 2 * self._watch_timeout + 30.0
        self._rng = rng or random.Random()
        self._store = ObjectStore()
        self._pending: tuple[contextlib.AsyncExitStack, AsyncIterator[Mapping[str, Any]]] | None
        self._pending = None
        self.stats = WatchStats()

    @property
    def store(self) -> ObjectStore:
        """The objects as last seen."""
        return self._store

    def _describe(self) -> str:
        return f"{self._kind.qualified} in {self._namespace!r} ({self._selector})"

    async def _forbidden(self, exc: ApiStatusError) -> KubernetesForbiddenError:
        missing = await self._api.denied_verbs(self._kind, self._namespace, REQUIRED_VERBS)
        return KubernetesForbiddenError(
            verb=exc.verb,
            resource=self._kind.qualified,
            namespace=self._namespace,
            missing_verbs=missing,
            server_message=exc.status.message,
        )

    async def _relist(self) -> None:
        items, version = await self._api.list_objects(self._kind, self._namespace, self._selector)
        self._store.replace(items, version)
        self.stats.lists += 1
        self.stats.resource_version = version
        logger.debug("listed %d %s at resourceVersion %s", len(items), self._describe(), version)
        self._notify()

    async def _open_watch(
        self,
    ) -> tuple[contextlib.AsyncExitStack, AsyncIterator[Mapping[str, Any]]]:
        timeout = int(self._rng.uniform(self._watch_timeout, 2 * self._watch_timeout))
        stack = contextlib.AsyncExitStack()
        try:
            events = await stack.enter_async_context(
                self._api.watch(
                    self._kind,
                    self._namespace,
                    self._selector,
                    self._store.resource_version,
                    timeout_seconds=timeout,
                    read_timeout=self._idle_timeout,
                )
            )
        except BaseException:
            await stack.aclose()
            raise
        self.stats.watches += 1
        return stack, events

    async def prime(self, startup_timeout: float) -> None:
        """LIST, then open the first WATCH, retrying transient failures.

        Opening the watch here (not later in :meth:`run`) means a missing ``watch``
        permission fails the node's start with a clear error instead of a log line.

        Raises:
            KubernetesForbiddenError: RBAC denies list or watch.
            KubernetesDiscoveryError: any other refusal (401, 404...), or transient
                failures that lasted ``startup_timeout`` seconds.
        """
        deadline = self._clock.monotonic() + startup_timeout
        listed = False
        while True:
            try:
                if not listed:
                    await self._relist()
                    listed = True
                self._pending = await self._open_watch()
                self._backoff.reset()
                return
            except ApiStatusError as exc:
                if exc.status.code == 403:
                    raise await self._forbidden(exc) from None
                if exc.status.expired and listed:
                    # Compacted between our LIST and WATCH: list again at once.
                    self.stats.expired += 1
                    listed = False
                    continue
                if not _is_transient(exc):
                    raise KubernetesDiscoveryError(
                        f"cannot {exc.verb} {self._describe()}: HTTP {exc.status.code} "
                        f"{exc.status.reason}: {exc.status.message}"
                    ) from exc
                error: BaseException = exc
            except _TRANSIENT as exc:
                error = exc
            self._record_error(error)
            delay = self._backoff.next()
            if self._clock.monotonic() + delay > deadline:
                raise KubernetesDiscoveryError(
                    f"cannot reach the Kubernetes API server to list {self._describe()} "
                    f"within {startup_timeout:.0f}s: {error!r}"
                ) from error
            logger.warning("discovery start: %s; retrying in %.1fs", _describe_error(error), delay)
            await self._clock.sleep(delay)

    def _record_error(self, exc: BaseException) -> None:
        self.stats.errors += 1
        self.stats.last_error = _describe_error(exc)

    async def run(self) -> None:
        """Watch until cancelled; never returns otherwise and never raises."""
        need_list = False
        consecutive_expired = 0
        try:
            while True:
                try:
                    if need_list:
                        await self._relist()
                        need_list = False
                    stack, events = self._pending or await self._open_watch()
                    self._pending = None
                    started = self._clock.monotonic()
                    received = 0
                    async with stack:
                        async for event in events:
                            received += 1
                            self._handle(event)
                            consecutive_expired = 0
                            self._backoff.reset()
                    # The server ended the watch (its timeoutSeconds, or it is shutting
                    # down). Re-watch at once, unless it ended suspiciously fast: then a
                    # backoff keeps a misbehaving server from being hammered.
                    if not received and self._clock.monotonic() - started < 1.0:
                        await self._clock.sleep(self._backoff.next())
                except _Expired:
                    consecutive_expired += 1
                    need_list = True
                    self.stats.expired += 1
                    logger.info(
                        "watch of %s: resourceVersion %s expired (410 Gone); relisting",
                        self._describe(),
                        self._store.resource_version,
                    )
                    if consecutive_expired > 1:
                        await self._clock.sleep(self._backoff.next())
                except ApiStatusError as exc:
                    if exc.status.expired:
                        consecutive_expired += 1
                        need_list = True
                        self.stats.expired += 1
                        logger.info(
                            "%s of %s: 410 Gone (%s); relisting",
                            exc.verb,
                            self._describe(),
                            exc.status.message,
                        )
                        if consecutive_expired > 1:
                            await self._clock.sleep(self._backoff.next())
                        continue
                    await self._retry_after(await self._explain(exc))
                except _TRANSIENT as exc:
                    await self._retry_after(exc)
        finally:
            await self.close()

    def _notify(self) -> None:
        # A failing consumer must not kill the watch loop (and with it every later update).
        try:
            self._on_change(self._store.objects)
        except Exception:
            logger.exception("discovery change callback failed; continuing to watch")

    def _handle(self, event: Mapping[str, Any]) -> None:
        outcome = self._store.apply(event)
        self.stats.resource_version = self._store.resource_version
        if outcome is Outcome.CHANGED:
            self.stats.events += 1
            self._notify()
        elif outcome is Outcome.UNCHANGED:
            if event.get("type") == "BOOKMARK":
                self.stats.bookmarks += 1
        elif outcome is Outcome.EXPIRED:
            raise _Expired
        else:
            status = self._store.last_error
            assert status is not None
            raise ApiStatusError("watch", status)

    async def _explain(self, exc: ApiStatusError) -> BaseException:
        # While running, a 403 means RBAC changed under us; keep retrying (it may be
        # fixed) but say loudly and precisely what is missing.
        if exc.status.code == 403:
            return await self._forbidden(exc)
        return exc

    async def _retry_after(self, exc: BaseException) -> None:
        self._record_error(exc)
        delay = self._backoff.next()
        level = logging.ERROR if isinstance(exc, KubernetesDiscoveryError) else logging.WARNING
        logger.log(
            level,
            "watch of %s failed: %s; retrying from resourceVersion %s in %.1fs",
            self._describe(),
            _describe_error(exc),
            self._store.resource_version,
            delay,
        )
        await self._clock.sleep(delay)

    async def close(self) -> None:
        """Close a watch opened by :meth:`prime` that :meth:`run` never took over."""
        pending, self._pending = self._pending, None
        if pending is not None:
            await pending[0].aclose()


class _Expired(Exception):
    """A 410 ERROR event arrived inside a watch stream."""


def _describe_error(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
