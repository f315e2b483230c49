"""The inbound side of a peer link: serving one Exchange stream a peer opened to us.

The stream's *reader* parses each frame and hands every request to the node's inbound
handler. A handler that returns a :class:`Response` directly is answered inline, with no
asyncio Task (the common case: in-memory work). A handler that returns an awaitable gets
exactly one Task, which a cancel from the peer cancels. Every response is serialized and
appended to the stream's outbox; the stream's single *writer* (the RPC handler coroutine
itself) joins everything in the outbox into one frame per write.

Nothing a handler does can break the stream: exceptions become error responses, an
oversized response becomes a ``TOO_LARGE`` response. A frame that cannot be parsed ends
this stream (INVALID_ARGUMENT), never the server.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from functools import partial
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from peer_ring.core._errors import PeerRingError
from peer_ring.core._types import Response, Status
from peer_ring.core.proto import peer_ring_pb2 as pb
from peer_ring.core.transport._base import InboundHandler
from peer_ring.core.transport._codec import (
    error_response,
    join_frames,
    request_from_pb,
    response_part,
)
from peer_ring.core.transport._options import EOF
from peer_ring.core.transport._stats import TransportStats

logger = logging.getLogger(__name__)


class InboundStream:
    """One accepted Exchange stream.

    Args:
        sender: the peer's address, from the call metadata.
        context: the gRPC servicer context of the stream.
        on_request: the node's inbound handler.
        max_bytes: max message size (frames and single responses).
        stats: the transport's counters.
    """

    def __init__(
        self,
        sender: str,
        context: grpc.aio.ServicerContext[bytes, bytes],
        on_request: InboundHandler,
        max_bytes: int,
        stats: TransportStats,
    ) -> None:
        self.sender = sender
        self._context = context
        self._on_request = on_request
        self._max_bytes = max_bytes
        self._stats = stats
        self._loop = asyncio.get_running_loop()
        self._outbox: list[bytes] = []
        self._wakeup = asyncio.Event()
        self._tasks: dict[int, asyncio.Future[Any]] = {}
        self._closed = False
        #: Set when the stream must end with INVALID_ARGUMENT (a malformed frame).
        self.abort_reason: str | None = None

    async def run(self) -> None:
        """Serve the stream until the peer ends it or :meth:`close` is called."""
        reader = self._loop.create_task(self._read_loop())
        try:
            await self._write_loop()
        except Exception as exc:
            # The peer went away while we wrote (cancelled call, reset connection). Handled
            # here: an exception escaping the servicer would be logged by gRPC as an error.
            logger.debug("writing the stream to %s failed: %r", self.sender, exc)
        finally:
            self._closed = True
            reader.cancel()
            tasks = list(self._tasks.values())
            self._tasks.clear()
            for task in tasks:
                task.cancel()
            await asyncio.gather(reader, *tasks, return_exceptions=True)

    def close(self) -> None:
        """End the stream (unsent responses are dropped)."""
        self._closed = True
        self._wakeup.set()

    async def _write_loop(self) -> None:
        stats = self._stats
        wakeup = self._wakeup
        context = self._context
        while not self._closed:
            if not self._outbox:
                wakeup.clear()
                await wakeup.wait()
                continue
            parts = self._outbox
            self._outbox = []
            frames = join_frames(parts, self._max_bytes)
            for frame in frames:
                await context.write(frame)
            stats.frames_sent += len(frames)

    async def _read_loop(self) -> None:
        stats = self._stats
        context = self._context
        try:
            while not self._closed:
                data: Any = await context.read()
                if data is EOF:
                    return
                try:
                    frame = pb.Frame.FromString(data)
                except DecodeError as exc:
                    stats.malformed_frames += 1
                    self.abort_reason = f"malformed frame: {exc}"
                    logger.warning(
                        "malformed frame on the stream from %s (%s): %s",
                        self.sender,
                        context.peer(),
                        exc,
                    )
                    return
                stats.frames_received += 1
                # Cancels first: they name requests of earlier frames, whose slots the
                # opener already reused for the requests of this one.
                cancels = frame.cancels
                if cancels:
                    stats.cancels_received += len(cancels)
                    for rid in cancels:
                        task = self._tasks.pop(rid, None)
                        if task is not None:
                            task.cancel()
                requests = frame.requests
                if requests:
                    stats.requests_received += len(requests)
                    for msg in requests:
                        self._dispatch(msg)
                if self._outbox:
                    self._wakeup.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The peer went away mid-read (reset, cancelled call): the stream is over.
            logger.debug("reading the stream from %s failed: %r", self.sender, exc)
        finally:
            self.close()

    def _dispatch(self, msg: pb.Request) -> None:
        rid = msg.id
        request = request_from_pb(msg)
        try:
            result = self._on_request(self.sender, request)
        except Exception as exc:
            self._respond(rid, self._handler_failed(request.namespace, request.command, exc))
            return
        if isinstance(result, Response):
            self._respond(rid, result)  # the inline path: no Task
        elif inspect.isawaitable(result):
            # The handler's coroutine becomes the one Task (a future is used as is); no
            # wrapper coroutine, so a task cancelled before it ever ran leaves no
            # never-awaited coroutine behind.
            task = asyncio.ensure_future(result, loop=self._loop)
            self._tasks[rid] = task
            task.add_done_callback(partial(self._finish, rid, request.namespace, request.command))
        else:
            self._respond(rid, self._not_a_response(request.namespace, request.command, result))

    def _finish(self, rid: int, namespace: str, command: str, task: asyncio.Future[Any]) -> None:
        if self._tasks.get(rid) is task:
            del self._tasks[rid]
        if task.cancelled() or self._closed:
            return  # cancelled by the peer, or the stream closed: nobody waits for an answer
        exc = task.exception()
        result: object
        if exc is None:
            result = task.result()
        elif isinstance(exc, Exception):
            result = self._handler_failed(namespace, command, exc)
        else:  # KeyboardInterrupt, SystemExit...: not ours to turn into a response
            return
        if not isinstance(result, Response):
            result = self._not_a_response(namespace, command, result)
        self._respond(rid, result)
        self._wakeup.set()

    def _handler_failed(self, namespace: str, command: str, exc: Exception) -> Response:
        self._stats.handler_errors += 1
        if isinstance(exc, PeerRingError):
            logger.debug("handler %s/%s failed: %s", namespace, command, exc)
        else:
            # Not an error the application meant to signal: most likely a bug, so show it.
            logger.warning(
                "handler %s/%s raised on a request from %s",
                namespace,
                command,
                self.sender,
                exc_info=exc,
            )
        return error_response(exc)

    def _not_a_response(self, namespace: str, command: str, value: object) -> Response:
        error = TypeError(f"handler returned {type(value).__name__}, not a Response")
        return self._handler_failed(namespace, command, error)

    def _respond(self, rid: int, response: Response) -> None:
        try:
            part = response_part(rid, response)
        except (TypeError, ValueError) as exc:  # e.g. a str payload, an invalid status
            part = response_part(rid, error_response(exc))
        if len(part) > self._max_bytes:
            self._stats.oversized_responses += 1
            part = response_part(
                rid,
                Response(
                    Status.TOO_LARGE,
                    b"",
                    f"response of {len(part)} bytes exceeds max_message_bytes={self._max_bytes}",
                ),
            )
        self._outbox.append(part)
        self._stats.responses_sent += 1
