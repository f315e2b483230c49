"""The list+watch loop, judged by what its listener is told, on a fake clock.

``ModelServer`` is a small model of the API server's list/watch semantics: objects with
resourceVersions, a history of events a watch replays from any version still held,
compaction (a watch from a compacted version answers 410 Gone), in-stream 410s, bookmarks
and watches the server ends. The tests change the server's objects and fail its requests,
then assert what a user of the discovery sees: the object sets reported to ``on_change``,
when (in fake seconds) each was reported, and the errors raised. They do not assert which
requests the reflector made: any sequence of calls that reports the right objects at the
right time passes. The real API server tests (test_discovery_apiserver.py,
test_watch_recovery.py) cover the same paths end to end, without the exact timing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from peer_ring.core.testing import FakeClock
from peer_ring.discovery.k8s import Backoff, KubernetesDiscoveryError, KubernetesForbiddenError
from peer_ring.discovery.k8s._api import ENDPOINT_SLICES, ApiStatusError
from peer_ring.discovery.k8s._reflector import Reflector
from peer_ring.discovery.k8s._store import StatusError

#: How long (real seconds) a test waits for a report the model says is due.
DUE = 5.0


def gone(verb: str = "watch") -> ApiStatusError:
    return ApiStatusError(verb, StatusError(410, "Expired", "too old resource version"))


class ModelServer:
    """The API server's list/watch behaviour for one kind, in memory.

    ``put``/``delete`` change an object and record the event (delivered to open watches
    unless ``deliver=False``, as when a watch cache lags). ``compact`` forgets the history:
    a watch from an older version then answers 410. ``fail_lists``/``fail_watches`` make
    the next requests fail with the given errors; ``after_list`` runs once after the next
    list is answered (to change things between a list and the watch that follows it).
    """

    def __init__(self) -> None:
        self.rv = 1
        self.objects: dict[str, dict[str, Any]] = {}
        self.history: list[tuple[int, dict[str, Any]]] = []
        self.compacted = 0
        self.open: list[asyncio.Queue[dict[str, Any] | None]] = []
        self.fail_lists: list[BaseException] = []
        self.fail_watches: list[BaseException] = []
        self.after_list: list[Callable[[], None]] = []
        self.denied: list[str] = []

    def _event(self, kind: str, name: str, deliver: bool) -> None:
        self.rv += 1
        obj = {"metadata": {"name": name, "resourceVersion": str(self.rv)}}
        event = {"type": kind, "object": obj}
        self.history.append((self.rv, event))
        if kind == "DELETED":
            self.objects.pop(name)
        else:
            self.objects[name] = obj
        if deliver:
            self._send(event)

    def _send(self, event: dict[str, Any] | None) -> None:
        for queue in self.open:
            queue.put_nowait(event)

    def put(self, name: str, *, deliver: bool = True) -> None:
        self._event("MODIFIED" if name in self.objects else "ADDED", name, deliver)

    def delete(self, name: str, *, deliver: bool = True) -> None:
        self._event("DELETED", name, deliver)

    def compact(self) -> None:
        self.compacted = self.rv

    def expire_open_watches(self) -> None:
        """An ERROR 410 inside every open watch (the watch cache dropped their version)."""
        self._send({"type": "ERROR", "object": {"code": 410, "reason": "Expired"}})

    def bookmark(self) -> None:
        self._send({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": str(self.rv)}}})

    def end_watches(self) -> None:
        """The server closes every open watch (its timeoutSeconds elapsed)."""
        self._send(None)

    # -- the KubeApi surface the reflector uses --

    async def list_objects(self, kind, namespace, selector, *, page_size=500):  # type: ignore[no-untyped-def]
        if self.fail_lists:
            raise self.fail_lists.pop(0)
        answer = ([dict(o) for o in self.objects.values()], str(self.rv))
        while self.after_list:
            self.after_list.pop(0)()
        return answer

    @contextlib.asynccontextmanager
    async def watch(self, kind, namespace, selector, rv, *, timeout_seconds, read_timeout):  # type: ignore[no-untyped-def]
        if self.fail_watches:
            raise self.fail_watches.pop(0)
        if int(rv) < self.compacted:
            raise gone()
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        for version, event in self.history:
            if version > int(rv):
                queue.put_nowait(event)
        self.open.append(queue)

        async def events() -> AsyncIterator[dict[str, Any]]:
            while (event := await queue.get()) is not None:
                yield event

        try:
            yield events()
        finally:
            self.open.remove(queue)

    async def denied_verbs(self, kind, namespace, verbs):  # type: ignore[no-untyped-def]
        return list(self.denied)


class Listener:
    """What ``on_change`` was told: (fake monotonic time, object names) per report."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.reports: list[tuple[float, set[str]]] = []
        self._queue: asyncio.Queue[set[str]] = asyncio.Queue()

    def __call__(self, objects: Any) -> None:
        self.reports.append((self.clock.monotonic(), set(objects)))
        self._queue.put_nowait(set(objects))

    async def until(self, names: set[str]) -> float:
        """Wait for a report of exactly ``names``; returns its fake time."""
        async with asyncio.timeout(DUE):
            while await self._queue.get() != names:
                pass
        return self.reports[-1][0]

    @property
    def views(self) -> list[set[str]]:
        return [names for _, names in self.reports]


def make(server: ModelServer, clock: FakeClock, listener: Listener) -> Reflector:
    return Reflector(
        server,  # type: ignore[arg-type]
        ENDPOINT_SLICES,
        "ns",
        "kubernetes.io/service-name=kv",
        on_change=listener,
        clock=clock,
        backoff=Backoff(initial=1.0, maximum=8.0, jitter=0.0),
        watch_timeout=300,
    )


@contextlib.asynccontextmanager
async def running(reflector: Reflector) -> AsyncIterator[None]:
    task = asyncio.create_task(reflector.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def advance_until(clock: FakeClock, listener: Listener, names: set[str]) -> float:
    """Move fake time in 0.25 s steps until ``names`` is reported; returns when it was."""
    for _ in range(200):
        if listener.reports and listener.reports[-1][1] == names:
            return listener.reports[-1][0]
        await clock.advance_async(0.25)
    raise AssertionError(f"{names} never reported; reports: {listener.reports}")


async def test_changes_while_a_watch_is_open_are_reported_as_they_happen() -> None:
    server, clock = ModelServer(), FakeClock()
    listener = Listener(clock)
    server.put("a")
    reflector = make(server, clock, listener)
    await reflector.prime(startup_timeout=10)
    assert listener.views == [{"a"}]
    async with running(reflector):
        server.put("b")
        await listener.until({"a", "b"})
        server.put("a")  # modified: same set, but reported (the consumer recomputes)
        await listener.until({"a", "b"})
        server.delete("a")
        assert await listener.until({"b"}) == 0.0
    assert listener.views == [{"a"}, {"a", "b"}, {"a", "b"}, {"b"}]


async def test_events_lost_to_a_410_inside_a_watch_are_recovered_at_once() -> None:
    server, clock = ModelServer(), FakeClock()
    listener = Listener(clock)
    server.put("a")
    reflector = make(server, clock, listener)
    await reflector.prime(startup_timeout=10)
    async with running(reflector):
        server.put("c")
        await listener.until({"a", "c"})
        # The watch cache falls behind: these changes never reach the open watch, whose
        # version is then compacted and ended with an in-stream 410.
        server.put("b", deliver=False)
        server.delete("a", deliver=False)
        server.delete("c", deliver=False)
        server.compact()
        server.expire_open_watches()
        # A first 410 is recovered without waiting (no backoff): same fake instant.
        assert await listener.until({"b"}) == 0.0
        # Later changes still arrive, also after the server ends a watch and after a
        # bookmark moved the version past a compaction (nothing is relisted twice).
        server.bookmark()
        server.put("x", deliver=False)
        server.delete("x", deliver=False)
        server.compact()
        server.bookmark()
        server.end_watches()
        server.put("d")
        await advance_until(clock, listener, {"b", "d"})
    assert listener.views[-1] == set(server.objects) == {"b", "d"}
    assert {"a", "c"} not in listener.views[listener.views.index({"b"}) :]
    assert reflector.stats.expired == 1


async def test_a_change_made_during_an_outage_is_reported_after_the_backoff() -> None:
    server, clock = ModelServer(), FakeClock()
    listener = Listener(clock)
    server.put("a")
    reflector = make(server, clock, listener)
    await reflector.prime(startup_timeout=10)
    refused = aiohttp.ClientConnectionError("refused")
    async with running(reflector):
        # The watch ends at once with no event (suspicious: back off 1 s), then three
        # refusals double the delay: 2, 4, 8 s. Meanwhile b is added and a deleted.
        server.fail_watches = [refused, refused, refused]
        server.end_watches()
        server.put("b", deliver=False)
        server.delete("a", deliver=False)
        reported_at = await advance_until(clock, listener, {"b"})
    assert reported_at == 1.0 + 2.0 + 4.0 + 8.0
    # Resumed from where it was: the outage's events are replayed, nothing is relisted,
    # and no intermediate or stale set was reported.
    assert listener.views == [{"a"}, {"a", "b"}, {"b"}]
    assert reflector.stats.lists == 1
    assert reflector.stats.errors == 3
    assert "refused" in reflector.stats.last_error


async def test_start_waits_for_a_server_that_comes_back_within_the_startup_timeout() -> None:
    server, clock = ModelServer(), FakeClock()
    listener = Listener(clock)
    server.put("a")
    server.fail_lists = [aiohttp.ClientConnectionError("refused")] * 2
    reflector = make(server, clock, listener)
    task = asyncio.create_task(reflector.prime(startup_timeout=5))
    await advance_until(clock, listener, {"a"})
    await task
    assert listener.reports == [(3.0, {"a"})]  # after the backoffs 1 s + 2 s


async def test_start_gives_up_when_the_server_stays_unreachable_past_the_startup_timeout() -> None:
    server, clock = ModelServer(), FakeClock()
    listener = Listener(clock)
    server.fail_lists = [aiohttp.ClientConnectionError("refused")] * 10
    reflector = make(server, clock, listener)
    task = asyncio.create_task(reflector.prime(startup_timeout=5))
    for _ in range(40):
        if task.done():
            break
        await clock.advance_async(0.25)
    # Delays 1 + 2 fit in 5 s; the next (4 s) would not: it gives up at 3 s, not at 7.
    assert clock.monotonic() == 3.0
    with pytest.raises(KubernetesDiscoveryError, match="within 5s") as caught:
        await task
    assert "refused" in str(caught.value)
    assert listener.reports == []


async def test_forbidden_at_start_is_raised_at_once_with_every_missing_verb() -> None:
    server, clock = ModelServer(), FakeClock()
    listener = Listener(clock)
    server.fail_watches = [ApiStatusError("watch", StatusError(403, "Forbidden", "cannot watch"))]
    server.denied = ["watch"]
    reflector = make(server, clock, listener)
    with pytest.raises(KubernetesForbiddenError) as caught:
        await reflector.prime(startup_timeout=60)
    assert caught.value.verb == "watch" and caught.value.missing_verbs == ["watch"]
    await clock.advance_async(60)
    assert server.fail_watches == [] and server.open == []  # no retry, nothing left open


async def test_a_compaction_between_the_list_and_the_first_watch_is_not_missed() -> None:
    server, clock = ModelServer(), FakeClock()
    listener = Listener(clock)
    server.put("a")

    def meanwhile() -> None:
        server.put("b")
        server.delete("a")
        server.compact()

    server.after_list = [meanwhile]
    reflector = make(server, clock, listener)
    await reflector.prime(startup_timeout=60)
    assert listener.views == [{"a"}, {"b"}]
    assert clock.monotonic() == 0.0
    async with running(reflector):
        server.put("c")
        await listener.until({"b", "c"})
    await reflector.close()


async def test_a_second_410_in_a_row_waits_a_backoff_before_recovering() -> None:
    server, clock = ModelServer(), FakeClock()
    listener = Listener(clock)
    reflector = make(server, clock, listener)
    await reflector.prime(startup_timeout=60)

    def compacted_again() -> None:
        # Between the relist and the watch that follows it: the next watch answers 410.
        server.put("c", deliver=False)
        server.compact()

    async with running(reflector):
        server.put("b", deliver=False)
        server.compact()
        server.after_list = [compacted_again]
        server.expire_open_watches()
        assert await listener.until({"b"}) == 0.0  # the first 410: at once
        # the second, in a row: c is reported only after a 1 s backoff
        assert await advance_until(clock, listener, {"b", "c"}) == 1.0
        server.put("d")
        await listener.until({"b", "c", "d"})
    assert reflector.stats.expired == 2
