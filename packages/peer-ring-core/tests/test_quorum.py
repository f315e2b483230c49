"""The quorum state machine, fed by hand (no network)."""

from __future__ import annotations

import asyncio

import pytest

from peer_ring.core import ExecuteResult, PeerUnavailableError, QuorumNotReachedError, Reply
from peer_ring.core._quorum import QuorumCollector

PREFS = ("a:1", "b:1", "c:1")


def collector(quorum: int) -> QuorumCollector:
    return QuorumCollector(asyncio.get_running_loop(), "ns", "cmd", ExecuteResult(7, PREFS), quorum)


async def test_resolves_at_quorum_and_keeps_collecting() -> None:
    c = collector(2)
    c.add(Reply("a:1", b"1"))
    assert not c.future.done()
    c.add(Reply("b:1", b"2"))
    result = c.future.result()
    assert [r.node for r in result.replies] == ["a:1", "b:1"]
    assert not result.complete
    seen: list[list[Reply]] = []
    result.on_complete(seen.append)
    c.add(Reply("c:1", b"3"))
    assert result.complete
    assert [r.payload for r in seen[0]] == [b"1", b"2", b"3"]


async def test_fails_as_soon_as_quorum_is_impossible() -> None:
    c = collector(2)
    c.add(Reply("a:1", b"", PeerUnavailableError("a:1", "refused")))
    assert not c.future.done()
    c.add(Reply("b:1", b"", PeerUnavailableError("b:1", "refused")))
    with pytest.raises(QuorumNotReachedError) as info:
        c.future.result()
    assert set(info.value.failures) == {"a:1", "b:1"}
    assert "a:1" in str(info.value) and "b:1" in str(info.value)


async def test_expire_fails_only_the_silent_replicas() -> None:
    c = collector(3)
    c.add(Reply("a:1", b"ok"))
    c.fail_silent(TimeoutError("deadline"))
    with pytest.raises(QuorumNotReachedError) as info:
        c.future.result()
    # the error is raised the moment quorum 3 became impossible (the first silent replica)
    assert set(info.value.failures) == {"b:1"}
    assert info.value.succeeded == ["a:1"]
    assert {r.node for r in c.result.replies if not r.ok} == {"b:1", "c:1"}
    assert c.result.complete


async def test_replies_after_completion_are_ignored() -> None:
    c = collector(1)
    for node in PREFS:
        c.add(Reply(node, b"x"))
    c.add(Reply("a:1", b"late duplicate"))
    assert len(c.result.replies) == 3
