"""The list+watch loop's decisions, with a scripted API and a fake clock (no real time).

The real API server tests cover the same paths end to end; these pin the exact sequence
of calls and backoff sleeps, which a real server cannot make deterministic.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from peer_ring.core.testing import FakeClock, settle_loop
from peer_ring.discovery.k8s import Backoff, KubernetesDiscoveryError, KubernetesForbiddenError
from peer_ring.discovery.k8s._api import ENDPOINT_SLICES, ApiStatusError
from peer_ring.discovery.k8s._reflector import Reflector
from peer_ring.discovery.k8s._store import StatusError

_FOREVER = object()


def obj(name: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": rv}}


class ScriptedApi:
    """Answers list/watch calls from queues; records every call."""

    def __init__(self) -> None:
        self.lists: list[Any] = []  # each: (items, rv) or an exception
        self.watches: list[Any] = []  # each: list of events (then EOF) or an exception
        self.calls: list[tuple[str, str]] = []
        self.denied: list[str] = []

    async def list_objects(self, kind, namespace, selector, *, page_size=500):
        self.calls.append(("list", ""))
        result = self.lists.pop(0)
        if isinstance(result, BaseException):
            raise result
        return result

    @contextlib.asynccontextmanager
    async def watch(self, kind, namespace, selector, rv, *, timeout_seconds, read_timeout):
        self.calls.append(("watch", rv))
        if not self.watches:
            # Script over: a quiet watch that lasts until the test cancels the loop.
            self.watches.append([_FOREVER])
        script = self.watches.pop(0)
        if isinstance(script, BaseException):
            raise script

        async def events() -> AsyncIterator[dict[str, Any]]:
            for event in script:
                if event is _FOREVER:
                    await asyncio.Event().wait()
                if isinstance(event, BaseException):
                    raise event
                yield event

        yield events()

    async def denied_verbs(self, kind, namespace, verbs):
        return list(self.denied)


def make(api: ScriptedApi, clock: FakeClock, changes: list[set[str]]) -> Reflector:
    return Reflector(
        api,  # type: ignore[arg-type]
        ENDPOINT_SLICES,
        "ns",
        "kubernetes.io/service-name=kv",
        on_change=lambda objects: changes.append(set(objects)),
        clock=clock,
        backoff=Backoff(initial=1.0, maximum=8.0, jitter=0.0),
        watch_timeout=300,
    )


def gone() -> ApiStatusError:
    return ApiStatusError("watch", StatusError(410, "Expired", "too old resource version"))


async def test_410_inside_a_watch_relists_and_resumes_from_the_new_version() -> None:
    api, clock, changes = ScriptedApi(), FakeClock(), []
    api.lists = [([obj("a", "5")], "10"), ([obj("b", "20")], "30")]
    api.watches = [
        [{"type": "ADDED", "object": obj("c", "11")}, {"type": "ERROR", "object": {"code": 410}}],
        [{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "31"}}}],
    ]
    reflector = make(api, clock, changes)
    await reflector.prime(startup_timeout=10)
    task = asyncio.create_task(reflector.run())
    await settle_loop(50)
    # list@10, watch from 10, 410 -> list@30 (no sleep for a first 410), watch from 30,
    # a bookmark moves to 31, the server ends that watch, the next one resumes from 31.
    assert api.calls[:5] == [
        ("list", ""),
        ("watch", "10"),
        ("list", ""),
        ("watch", "30"),
        ("watch", "31"),
    ]
    assert changes[:3] == [{"a"}, {"a", "c"}, {"b"}]
    assert reflector.stats.expired == 1 and reflector.stats.bookmarks == 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_connection_errors_back_off_exponentially_and_resume_from_the_same_version() -> None:
    api, clock, changes = ScriptedApi(), FakeClock(), []
    api.lists = [([], "10")]
    refused = aiohttp.ClientConnectionError("refused")
    api.watches = [[], refused, refused, refused, [{"type": "ADDED", "object": obj("a", "12")}]]
    reflector = make(api, clock, changes)
    await reflector.prime(startup_timeout=10)
    task = asyncio.create_task(reflector.run())
    # The primed watch ends at once with no event: suspicious, so it backs off 1 s,
    # then each refusal doubles the delay: 2 s, 4 s, 8 s.
    for delay in (1.0, 2.0, 4.0, 8.0):
        await settle_loop(30)
        assert clock.pending_timers == 1
        await clock.advance_async(delay - 0.01)
        assert clock.pending_timers == 1  # not yet
        await clock.advance_async(0.01)
    await settle_loop(30)
    assert [c for c in api.calls if c[0] == "watch"][:5] == [("watch", "10")] * 5
    assert changes[-1] == {"a"}
    assert reflector.stats.errors == 3  # the three refusals
    assert reflector.stats.lists == 1  # resumed every time, never relisted
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_start_retries_an_unreachable_server_until_the_startup_timeout() -> None:
    api, clock, changes = ScriptedApi(), FakeClock(), []
    api.lists = [aiohttp.ClientConnectionError("refused")] * 10
    reflector = make(api, clock, changes)
    task = asyncio.create_task(reflector.prime(startup_timeout=5))
    await clock.advance_async(1.0)
    await clock.advance_async(2.0)
    # Delays 1 + 2 fit in 5 s; the third (4 s) would not, so it gives up after 3 tries.
    with pytest.raises(KubernetesDiscoveryError, match="within 5s"):
        await task
    assert len(api.calls) == 3
    assert reflector.stats.errors == 3


async def test_forbidden_at_start_is_raised_at_once_with_every_missing_verb() -> None:
    api, clock, changes = ScriptedApi(), FakeClock(), []
    api.lists = [([], "10")]
    api.watches = [ApiStatusError("watch", StatusError(403, "Forbidden", "cannot watch"))]
    api.denied = ["watch"]
    reflector = make(api, clock, changes)
    with pytest.raises(KubernetesForbiddenError) as caught:
        await reflector.prime(startup_timeout=60)
    assert caught.value.verb == "watch" and caught.value.missing_verbs == ["watch"]
    assert clock.pending_timers == 0  # no retry


async def test_compaction_between_list_and_first_watch_lists_again() -> None:
    api, clock, changes = ScriptedApi(), FakeClock(), []
    api.lists = [([obj("a", "1")], "10"), ([obj("b", "2")], "20")]
    api.watches = [gone(), []]
    reflector = make(api, clock, changes)
    await reflector.prime(startup_timeout=60)
    assert api.calls == [("list", ""), ("watch", "10"), ("list", ""), ("watch", "20")]
    assert set(reflector.store.objects) == {"b"}
    await reflector.close()


async def test_repeated_410s_are_backed_off() -> None:
    api, clock, changes = ScriptedApi(), FakeClock(), []
    api.lists = [([], "10"), ([], "11"), ([], "12")]
    api.watches = [[{"type": "ERROR", "object": {"code": 410}}], gone()]
    reflector = make(api, clock, changes)
    await reflector.prime(startup_timeout=60)
    task = asyncio.create_task(reflector.run())
    await settle_loop(30)
    # First 410 (in the stream): relist at once. Second in a row (opening the watch):
    # wait a backoff before relisting, in case the server keeps answering 410.
    assert api.calls == [("list", ""), ("watch", "10"), ("list", ""), ("watch", "11")]
    assert clock.pending_timers == 1
    await clock.advance_async(1.0)
    assert api.calls[4:] == [("list", ""), ("watch", "12")]
    assert reflector.stats.expired == 2 and reflector.stats.lists == 3
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
