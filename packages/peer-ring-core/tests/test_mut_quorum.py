"""Quorum collector details the mutation run found untested (tools/mutation, docs/testing.md).

Each test names what it pins down: the error message's namespace, command and quorum, and
the empty payload recorded for replicas that expired.
"""

from __future__ import annotations

import asyncio

import pytest

from peer_ring.core import ExecuteResult, PeerUnavailableError, QuorumNotReachedError, Reply
from peer_ring.core._quorum import QuorumCollector

PREFS = ("a:1", "b:1", "c:1")


def collector(quorum: int) -> QuorumCollector:
    loop = asyncio.get_running_loop()
    return QuorumCollector(loop, "kv", "set", ExecuteResult(7, PREFS), quorum)


async def test_the_error_names_the_namespace_the_command_and_the_quorum() -> None:
    c = collector(3)
    c.add(Reply("a:1", b"", PeerUnavailableError("a:1", "refused")))
    with pytest.raises(QuorumNotReachedError) as info:
        c.future.result()
    message = str(info.value)
    assert message.startswith("kv/set: quorum of 3 not reached (0 succeeded)")
    assert info.value.quorum == 3
    assert info.value.succeeded == []


async def test_the_error_lists_successes_and_failures_apart() -> None:
    c = collector(3)
    c.add(Reply("a:1", b"ok"))
    c.add(Reply("b:1", b"", PeerUnavailableError("b:1", "refused")))
    with pytest.raises(QuorumNotReachedError) as info:
        c.future.result()
    assert info.value.succeeded == ["a:1"]
    assert list(info.value.failures) == ["b:1"]
    assert "(1 succeeded)" in str(info.value)


async def test_expired_replicas_are_recorded_with_an_empty_payload_and_the_error() -> None:
    c = collector(1)
    c.add(Reply("a:1", b"ok"))
    deadline = TimeoutError("deadline")
    c.fail_silent(deadline)
    assert c.result.complete
    expired = [r for r in c.result.replies if r.node != "a:1"]
    assert [r.node for r in expired] == ["b:1", "c:1"]
    assert all(r.payload == b"" and r.error is deadline for r in expired)
    assert c.future.result() is c.result
