"""Quorum counting: a future fed with replica replies, no I/O.

A :class:`QuorumCollector` resolves its future with its :class:`ExecuteResult` as soon
as ``quorum`` successes arrived, or fails it with ``QuorumNotReachedError`` as soon as too
many replicas failed for the quorum to still be possible (no waiting for the deadline when
the outcome is already known). It keeps collecting after that, so the
:class:`ExecuteResult` sees every late reply. No asyncio Task is created: replies arrive
from the transport's reader or through future callbacks.

The coordinator's :class:`~peer_ring.core._operation.Operation` is a collector (a
subclass): one object per operation, not an operation and a collector (issue 23, round
5). The future stays a plain ``asyncio.Future``: a Task awaiting a subclass of it takes
asyncio's slow path (measured: about 0.4 us more per operation, and a Python
``__init__`` another 0.5 us).
"""

from __future__ import annotations

import asyncio

from peer_ring.core._errors import QuorumNotReachedError
from peer_ring.core._result import ExecuteResult, Reply


class QuorumCollector:
    """Counts replies of one replicated operation.

    Attributes:
        future: resolves with ``result`` once the quorum is reached.
        result: the :class:`ExecuteResult` the replies are collected in.
        quorum: successes needed.
        expected: replies to wait for (one per replica asked).
    """

    __slots__ = (
        "expected",
        "failures",
        "future",
        "name",
        "namespace",
        "quorum",
        "result",
        "successes",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        namespace: str,
        name: str,
        result: ExecuteResult,
        quorum: int,
        expected: int | None = None,
    ) -> None:
        self.future: asyncio.Future[ExecuteResult] = loop.create_future()
        self.result = result
        self.namespace = namespace
        self.name = name  # the command's
        self.quorum = quorum
        # Replies to wait for: one per replica asked (a substitute or a previous holder
        # takes the place of the one it replaces; a speculative read adds one, see grow()).
        self.expected = len(result.preference_list) if expected is None else expected
        self.successes = 0
        self.failures = 0

    def add(self, reply: Reply) -> None:
        """Record one replica's reply.

        ``Operation.answered`` and ``Operation._run_here`` repeat the success case inline
        (the hot path: one call less per reply); a change here goes there too.
        """
        result = self.result
        if result._complete:
            return
        result.replies.append(reply)
        if reply.error is None:
            self.successes += 1
        else:
            self.failures += 1
        fut = self.future
        if not fut.done():
            if self.successes >= self.quorum:
                fut.set_result(result)
            elif self.expected - self.failures < self.quorum:
                fut.set_exception(self._error())
        if self.successes + self.failures >= self.expected:
            result._finish()

    def expect(self, count: int) -> None:
        """Wait for ``count`` replies (a quorum read asks fewer than the whole list)."""
        self.expected = count

    def grow(self) -> None:
        """Wait for one more reply (a read asked one more replica)."""
        self.expected += 1

    def fail_silent(self, error: BaseException) -> None:
        """Fail every replica that has not answered yet (the operation's deadline)."""
        answered = {r.node for r in self.result.replies}
        for node in self.result.preference_list:
            if node not in answered and not self.result.complete:
                self.add(Reply(node, b"", error))

    def _error(self) -> QuorumNotReachedError:
        replies = self.result.replies
        return QuorumNotReachedError(
            self.namespace,
            self.name,
            self.quorum,
            [r.node for r in replies if r.error is None],
            {r.node: r.error for r in replies if r.error is not None},
        )
