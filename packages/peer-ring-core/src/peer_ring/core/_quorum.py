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
        "_quorum",
        "_successes",
        "future",
        "result",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        namespace: str,
        command: str,
        result: ExecuteResult,
        quorum: int,
    ) -> None:
        self.future: asyncio.Future[ExecuteResult] = loop.create_future()
        self.result = result
        self._namespace = namespace
        self._command = command
        self._quorum = quorum
        self._expected = len(result.preference_list)
        self._successes = 0
        self._failures = 0

    def add(self, reply: Reply) -> None:
        """Record one replica's reply."""
        if self.result.complete:
            return
        self.result.replies.append(reply)
        if reply.error is None:
            self._successes += 1
        else:
            self._failures += 1
        fut = self.future
        if not fut.done():
            if self._successes >= self._quorum:
                fut.set_result(self.result)
            elif self._expected - self._failures < self._quorum:
                fut.set_exception(self._error())
        if self._successes + self._failures >= self._expected:
            self.result._finish()

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
            self._quorum,
            [r.node for r in replies if r.error is None],
            {r.node: r.error for r in replies if r.error is not None},
        )
