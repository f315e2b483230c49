"""What a replicated operation returns, and what a command handler receives."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# The two value types below are frozen dataclasses (public: equality, hash, repr,
# ``dataclasses.fields`` / ``replace``) whose ``__init__`` is written by hand. The generated
# one of a frozen dataclass sets each field with ``object.__setattr__`` (about 0.5 us for
# three fields); setting the slots through their descriptors costs half, and every
# replicated operation builds several of each (docs/benchmarks.md, issue 23 round 4).


@dataclass(frozen=True, slots=True, init=False)
class CommandContext:
    """Passed to every command handler.

    Attributes:
        source: address of the node that sent the request (this node's own for local runs).
        partition: the partition of the key. For a command that reads or mutates a key,
            the node running the handler computed it from the key (a peer's claim is not
            trusted); otherwise it is the sender's.
        hint: for sloppy-quorum writes, the replica this write is held for ("" otherwise).
        local: True when the handler runs on the coordinating node itself.
    """

    source: str
    partition: int
    hint: str = ""
    local: bool = False

    def __init__(self, source: str, partition: int, hint: str = "", local: bool = False) -> None:
        _ctx_source(self, source)
        _ctx_partition(self, partition)
        _ctx_hint(self, hint)
        _ctx_local(self, local)


@dataclass(frozen=True, slots=True, init=False)
class Reply:
    """One replica's answer.

    Attributes:
        node: the replica's address.
        payload: the handler's result bytes (empty on error).
        error: the error the replica produced, or None on success.
    """

    node: str
    payload: bytes = b""
    error: BaseException | None = None

    def __init__(self, node: str, payload: bytes = b"", error: BaseException | None = None) -> None:
        _reply_node(self, node)
        _reply_payload(self, payload)
        _reply_error(self, error)

    @property
    def ok(self) -> bool:
        """True when the replica answered successfully."""
        return self.error is None


def _slot_setter(cls: type, name: str) -> Callable[[object, Any], None]:
    """The ``__set__`` of ``cls``'s slot ``name`` (bypasses the frozen ``__setattr__``)."""
    setter: Callable[[object, Any], None] = cls.__dict__[name].__set__
    return setter


# The slots' descriptors (``slots=True`` makes a new class: they exist only from here on).
_ctx_source = _slot_setter(CommandContext, "source")
_ctx_partition = _slot_setter(CommandContext, "partition")
_ctx_hint = _slot_setter(CommandContext, "hint")
_ctx_local = _slot_setter(CommandContext, "local")
_reply_node = _slot_setter(Reply, "node")
_reply_payload = _slot_setter(Reply, "payload")
_reply_error = _slot_setter(Reply, "error")

CompletionCallback = Callable[[list["Reply"]], None]


class ExecuteResult:
    """The outcome of one key of ``PeerRing.execute`` / ``execute_many``.

    ``execute`` returns it as soon as the quorum is met; ``execute_many`` returns one per
    item once every key has reached its quorum or can no longer reach it (then ``error``
    says why and ``ok`` is false). ``replies`` holds every reply received so far and keeps
    growing as slower replicas answer; ``on_complete`` / ``all_replies`` give the
    application every replica's reply once all have answered or failed, which is what
    read repair needs.

    Attributes:
        key: the key (bytes).
        partition: the key's partition.
        preference_list: the replicas the key was sent to first (owner first).
        replies: every reply received so far (substitutes and previous holders included).
        error: for ``execute_many``, the key's :class:`QuorumNotReachedError` (or the
            error that made the key fail); ``None`` on success. ``execute`` raises it.
    """

    __slots__ = (
        "_callbacks",
        "_complete",
        "error",
        "key",
        "partition",
        "preference_list",
        "replies",
    )

    def __init__(self, partition: int, preference_list: tuple[str, ...], key: bytes = b"") -> None:
        self.key = key
        self.partition = partition
        self.preference_list = preference_list
        self.replies: list[Reply] = []
        self.error: BaseException | None = None
        self._complete = False
        self._callbacks: list[CompletionCallback] | None = None  # allocated when needed

    @property
    def ok(self) -> bool:
        """True when the key reached its quorum."""
        return self.error is None

    def __repr__(self) -> str:
        state = "ok" if self.error is None else f"error={self.error!r}"
        return f"ExecuteResult(key={self.key!r}, {state}, replies={len(self.replies)})"

    @property
    def ok_replies(self) -> list[Reply]:
        """Successful replies received so far."""
        return [r for r in self.replies if r.error is None]

    @property
    def payloads(self) -> list[bytes]:
        """Payloads of the successful replies received so far."""
        return [r.payload for r in self.replies if r.error is None]

    @property
    def complete(self) -> bool:
        """True once every replica in the preference list answered or failed."""
        return self._complete

    def on_complete(self, callback: CompletionCallback) -> None:
        """Call ``callback(replies)`` once every replica has answered or failed."""
        if self._complete:
            callback(list(self.replies))
        elif self._callbacks is None:
            self._callbacks = [callback]
        else:
            self._callbacks.append(callback)

    async def all_replies(self) -> list[Reply]:
        """Wait for every replica's reply (bounded by the operation's timeout)."""
        if self._complete:
            return list(self.replies)
        fut: asyncio.Future[list[Reply]] = asyncio.get_running_loop().create_future()

        def resolve(replies: list[Reply]) -> None:
            if not fut.done():
                fut.set_result(replies)

        self.on_complete(resolve)
        return await fut

    def _finish(self) -> None:
        self._complete = True
        callbacks, self._callbacks = self._callbacks, None
        if callbacks:
            for cb in callbacks:
                cb(list(self.replies))
