"""Per-key quorum counting for batched operations (``mget`` / ``mset``).

A batch sends one request per replica node carrying every key that node replicates, so a
100-key ``mget`` over 3 nodes costs 3 messages, not 300. Each key still needs its own
quorum: this collector counts, per key, the nodes that answered, and resolves once every
key reached its quorum, or fails as soon as one key no longer can. Pure bookkeeping: no I/O.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from peer_ring.core import QuorumNotReachedError


class BatchCollector:
    """Tracks the replies of one batched operation.

    Args:
        loop: the running loop (for the result future).
        command: name used in error messages.
        key_nodes: for each key (by index), the nodes it was sent to.
        quorum: successful node replies needed per key.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        command: str,
        key_nodes: Sequence[tuple[str, ...]],
        quorum: int,
    ) -> None:
        self.future: asyncio.Future[None] = loop.create_future()
        self._command = command
        self._quorum = quorum
        self._key_nodes = key_nodes
        self._ok = [0] * len(key_nodes)
        self._failed = [0] * len(key_nodes)
        self._pending_keys = len(key_nodes)
        self._errors: dict[str, BaseException] = {}
        self._succeeded: set[str] = set()
        self._answered = 0
        if not key_nodes:
            self.future.set_result(None)

    def node_succeeded(self, node: str, key_indexes: Sequence[int]) -> None:
        """``node`` answered for every key in ``key_indexes``."""
        self._succeeded.add(node)
        for i in key_indexes:
            self._ok[i] += 1
            if self._ok[i] == self._quorum:
                self._pending_keys -= 1
        if self._pending_keys == 0 and not self.future.done():
            self.future.set_result(None)

    def node_failed(self, node: str, key_indexes: Sequence[int], error: BaseException) -> None:
        """``node`` failed: none of its keys got an answer from it."""
        self._errors[node] = error
        for i in key_indexes:
            self._failed[i] += 1
            if len(self._key_nodes[i]) - self._failed[i] < self._quorum and not self.future.done():
                self.future.set_exception(
                    QuorumNotReachedError(
                        "kv",
                        self._command,
                        self._quorum,
                        sorted(self._succeeded),
                        dict(self._errors),
                    )
                )
                return
