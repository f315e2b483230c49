"""Internal commands (namespace ``__peer_ring__``) that peers send each other: ``ping``,
``digests``, ``delta``, ``handoff`` and ``leaving``. One entry point, one error mapping."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from peer_ring.core._errors import PeerRingError
from peer_ring.core._hooks import DIGEST_BUCKETS, VersionedDataHooks
from peer_ring.core._sync._context import SyncContext
from peer_ring.core._sync._delta import known_versions, take_within
from peer_ring.core._sync._detector import FailureDetector
from peer_ring.core._sync._digests import HoldState, RemotePartition
from peer_ring.core._sync._roots import ROOTS_SLICE
from peer_ring.core._sync._wire import (
    DELTA_MORE,
    DELTA_UNSUPPORTED,
    FLAG_LEAVING,
    decode_delta_request,
    decode_digest_request,
    decode_ping,
    encode_delta_response,
    encode_digest_response,
    encode_ping,
)
from peer_ring.core._types import Request, Response, Status

#: ``serve(source, payload)`` of a command answered asynchronously.
AsyncServe = Callable[[str, bytes], Awaitable[bytes]]
#: ``serve(source, payload, timeout)`` of the leave command.
LeaveServe = Callable[[str, bytes, float], Awaitable[bytes]]


class InternalCommands:
    """Answers the internal commands of peers.

    Args:
        ctx: the node's sync context.
        detector: the failure detector (pings carry incarnations).
        serve_handoff: answers ``handoff`` (see :meth:`Handoff.serve`).
        serve_leaving: answers ``leaving`` (see :meth:`Leaver.serve`).
    """

    def __init__(
        self,
        ctx: SyncContext,
        detector: FailureDetector,
        serve_handoff: AsyncServe,
        serve_leaving: LeaveServe,
    ) -> None:
        self._ctx = ctx
        self._detector = detector
        self._serve_handoff = serve_handoff
        self._serve_leaving = serve_leaving

    def answer(self, source: str, request: Request) -> Response | Awaitable[Response]:
        """Answer one internal command (synchronously when it can)."""
        command = request.command
        try:
            if command == "ping":
                return self._ping(source, request.payload)
            if command == "digests":
                return self._digests(request.payload)
            if command == "delta":
                return self._delta(request.payload)
            if command == "handoff":
                return self._guard(self._serve_handoff, source, request.payload)
            if command == "leaving":
                return self._guard(self._serve_leaving, source, request.payload, request.timeout)
        except (ValueError, IndexError) as exc:
            return Response(Status.INVALID_ARGUMENT, b"", f"bad {command} payload: {exc}")
        return Response(Status.UNKNOWN_COMMAND, b"", f"unknown internal command {command!r}")

    async def _guard(self, serve: Callable[..., Awaitable[bytes]], *args: Any) -> Response:
        # The serving coroutine is created here, when the task runs, not by the caller:
        # a task cancelled before it starts (its stream closed) then leaves no coroutine
        # that was never awaited behind.
        try:
            return Response(Status.OK, await serve(*args), "")
        except asyncio.CancelledError:
            raise
        except (ValueError, IndexError) as exc:
            return Response(Status.INVALID_ARGUMENT, b"", str(exc))
        except PeerRingError as exc:
            return Response(Status.ERROR, b"", f"{type(exc).__name__}: {exc}")

    def _ping(self, source: str, payload: bytes) -> Response:
        incarnation, flags = decode_ping(payload)
        self._detector.observe_incarnation(source, incarnation, flags, confirmed=False)
        self._detector.inbound(source)
        ctx = self._ctx
        flags_out = FLAG_LEAVING if ctx.leaving else 0
        return Response(Status.OK, encode_ping(ctx.incarnation, flags_out, ctx.clock.time()), "")

    def _delta(self, payload: bytes) -> Response:
        """The records of some buckets that the asker lacks, by its version list."""
        ctx = self._ctx
        request = decode_delta_request(payload)
        if not 0 <= request.partition < ctx.cfg.partitions:
            raise ValueError(f"partition {request.partition} out of range")
        if any(b >= DIGEST_BUCKETS for b in request.buckets):
            raise ValueError(f"digest buckets must be below {DIGEST_BUCKETS}")
        hooks = ctx.hooks.get(request.namespace)
        if hooks is None or not isinstance(hooks, VersionedDataHooks):
            return Response(Status.OK, encode_delta_response([], DELTA_UNSUPPORTED), "")
        budget = min(request.budget, ctx.cfg.transport_limits.max_message_bytes // 2)
        newer = hooks.export_newer(
            request.partition, request.buckets, known_versions(request.entries)
        )
        records, more = take_within(newer, budget)
        return Response(Status.OK, encode_delta_response(records, DELTA_MORE if more else 0), "")

    def _digests(self, payload: bytes) -> Response | Awaitable[Response]:
        ctx = self._ctx
        partitions = ctx.cfg.partitions
        asked = decode_digest_request(payload)
        for p, _ in asked:
            if not 0 <= p < partitions:
                raise ValueError(f"partition {p} out of range")
        if len(asked) <= ROOTS_SLICE:
            return Response(Status.OK, encode_digest_response(self._describe(asked)), "")
        return self._guard(self._digests_sliced, asked)

    async def _digests_sliced(self, asked: list[tuple[int, int]]) -> bytes:
        # A whole round's partitions (hundreds to thousands): a slice, then a few loop
        # turns, so that the requests arriving meanwhile are not held behind them (._roots).
        entries: list[RemotePartition] = []
        for start in range(0, len(asked), ROOTS_SLICE):
            if start:
                await self._ctx.between_slices()
            entries.extend(self._describe(asked[start : start + ROOTS_SLICE]))
        return encode_digest_response(entries)

    def _describe(self, asked: list[tuple[int, int]]) -> list[RemotePartition]:
        """This node's answer for each ``(partition, the asker's root)``."""
        ctx = self._ctx
        table = ctx.table
        roots = ctx.roots
        entries = []
        for p, root in asked:
            state = table.state(p)
            if state is HoldState.NONE:
                entries.append(RemotePartition(p, state, False, {}))
                continue
            digests = ctx.local_digests(p)
            equal = roots.root(p, digests) == root
            entries.append(RemotePartition(p, state, equal, {} if equal else digests))
        return entries
