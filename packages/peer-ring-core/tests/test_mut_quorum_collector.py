"""How many replies a quorum collector waits for: the preference list, an explicit count,
``expect`` (a quorum read asks fewer replicas) and ``grow`` (a speculative read asks one
more). Found by tools/mutation: no unit test reached them (docs/testing.md).

Observable behaviour only: when the future fails (as soon as the quorum can no longer be
reached) and when the result is complete (every expected reply in).
"""

from __future__ import annotations

import asyncio

import pytest

from peer_ring.core import ExecuteResult, PeerUnavailableError, QuorumNotReachedError, Reply
from peer_ring.core._quorum import QuorumCollector

PREFS = ("a:1", "b:1", "c:1")


def collector(quorum: int, expected: int | None = None) -> QuorumCollector:
    loop = asyncio.get_running_loop()
    return QuorumCollector(loop, "kv", "get", ExecuteResult(7, PREFS), quorum, expected)


def failed(node: str) -> Reply:
    return Reply(node, b"", PeerUnavailableError(node, "refused"))


async def test_by_default_it_waits_for_one_reply_per_replica_of_the_preference_list() -> None:
    c = collector(2)
    c.add(failed("a:1"))
    assert not c.future.done()  # two replicas left for a quorum of two
    c.add(Reply("b:1", b"ok"))
    assert not c.result.complete
    c.add(Reply("c:1", b"ok"))
    assert c.future.result() is c.result and c.result.complete


async def test_an_explicit_count_is_waited_for_instead_of_the_preference_list() -> None:
    c = collector(2, expected=2)
    assert c.expected == 2
    c.add(failed("a:1"))
    with pytest.raises(QuorumNotReachedError):  # one reply left: two cannot succeed
        c.future.result()
    assert not c.result.complete
    c.add(Reply("b:1", b"ok"))
    assert c.result.complete and len(c.result.replies) == 2


async def test_expect_lowers_the_count_a_quorum_read_waits_for() -> None:
    c = collector(1)
    c.expect(2)
    assert c.expected == 2
    c.add(failed("a:1"))
    assert not c.future.done()
    c.add(failed("b:1"))
    with pytest.raises(QuorumNotReachedError):
        c.future.result()
    assert c.result.complete  # not waiting for c:1, which was never asked


async def test_grow_waits_for_exactly_one_more_reply() -> None:
    c = collector(2)
    c.grow()  # a fourth replica asked
    assert c.expected == 4
    c.add(failed("a:1"))
    c.add(failed("b:1"))
    assert not c.future.done()  # two replies left: the quorum of two is still possible
    c.add(Reply("c:1", b"ok"))
    assert not c.result.complete
    c.add(Reply("d:1", b"ok"))
    assert c.future.result() is c.result
    assert c.result.complete and len(c.result.replies) == 4
