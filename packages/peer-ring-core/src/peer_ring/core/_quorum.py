"""Quorum counting: a small state machine fed with replica replies, no I/O.

It resolves its future as soon as ``quorum`` successes arrived, or fails it with
``QuorumNotReachedError`` as soon as too many replicas failed for the quorum to still be
possible (no waiting for the deadline when the outcome is already known). It keeps
collecting after that, so the :class:`ExecuteResult` sees every late reply. No asyncio
Task is created: replies arrive through future callbacks.
"""

from __future__ import annotations

import asyncio

from peer_ring.core._errors import QuorumNotReachedError
from peer_ring.core._result import ExecuteResult, Reply


class QuorumCollector:
    """Counts replies of one replicated operation."""

    __slots__ = (
        "_command",
        "_expected",
        "_failures",
        "_namespace",
        "_successes",
        "future",
        "quorum",
        "result",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        namespace: str,
        command: str,
        result: ExecuteResult,
        quorum: int,
        expected: int | None = None,
    ) -> None:
        self.future: asyncio.Future[ExecuteResult] = loop.create_future()
        self.result = result
        self._namespace = namespace
        self._command = command
        self.quorum = quorum
        # Replies to wait for: one per replica asked (a substitute or a previous holder
        # takes the place of the one it replaces; a speculative read adds one, see grow()).
        self._expected = len(result.preference_list) if expected is None else expected
        self._successes = 0
        self._failures = 0

    def add(self, reply: Reply) -> None:
        """Record one replica's reply."""
        result = self.result
        if result._complete:
            return
        result.replies.append(reply)
        if reply.error is None:
            self._successes += 1
        else:
            self._failures += 1
        fut = self.future
        if not fut.done():
            if self._successes >= self.quorum:
                fut.set_result(result)
            elif self._expected - self._failures < self.quorum:
                fut.set_exception(self._error())
        if self._successes + self._failures >= self._expected:
            result._finish()

    def expect(self, count: int) -> None:
        """Wait for ``count`` replies (a quorum read asks fewer than the whole list)."""
        self._expected = count

    def grow(self) -> None:
        """Wait for one more reply (a read asked one more replica)."""
        self._expected += 1

    def expire(self, error: BaseException) -> None:
        """Fail every replica that has not answered yet (the operation's deadline)."""
        answered = {r.node for r in self.result.replies}
        for node in self.result.preference_list:
            if node not in answered and not self.result.complete:
                self.add(Reply(node, b"", error))

    def _error(self) -> QuorumNotReachedError:
        replies = self.result.replies
        return QuorumNotReachedError(
            self._namespace,
            self._command,
            self.quorum,
            [r.node for r in replies if r.error is None],
            {r.node: r.error for r in replies if r.error is not None},
        )
