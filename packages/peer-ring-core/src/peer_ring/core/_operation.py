"""The fan-out of one key: sloppy-quorum substitutes, read forwarding, batched sends.

An :class:`Operation` sends one key's command to its replicas and counts every reply,
local or remote: it is a :class:`~peer_ring.core._quorum.QuorumCollector` (one object per
operation; the coordinator awaits its ``future``). A failed hinted write goes to a substitute
with a hint (Dynamo §4.6); a read refused as "not ready" goes to a previous holder of the
partition. Each node is asked at most once per key.

A reading command (``reads`` and not ``mutates``) with ``read_fanout="quorum"`` asks only
``quorum`` replicas first: this node when it is a replica and can serve the partition,
then the others in preference order (suspected ones last). The rest are *spares*: the
next one is asked at once when an asked replica refuses or fails, and after
``read_speculate_after`` seconds when the quorum is still missing (a speculative request).
Any R replicas of the key's preference list intersect every W-replica write quorum when
R + W > N, so asking fewer replicas keeps the read's guarantee while the read costs R
requests and handler runs instead of N.

The operations of one ``execute_many`` share a :class:`BatchSender`: what each of them
sends to a peer is queued and flushed as one batch request per peer (split only when it
would exceed the frame budget), and the per-item answers are handed back to each key's
operation, so substitutes, hints and forwarding work per key exactly as for ``execute``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from functools import partial
from typing import TYPE_CHECKING

from peer_ring.core._batch import BATCH, BatchItem, decode_results, encode_items, item_size
from peer_ring.core._command import Command
from peer_ring.core._errors import (
    InvalidArgumentError,
    PeerUnavailableError,
    RequestTimeoutError,
)
from peer_ring.core._quorum import QuorumCollector
from peer_ring.core._result import ExecuteResult, Reply
from peer_ring.core._ring import Ring
from peer_ring.core._status import error_for_status
from peer_ring.core._types import Request, Response, Status

if TYPE_CHECKING:
    from peer_ring.core._coordinator import Coordinator

#: ``Status.OK`` read once: the attribute lookup on the enum class costs about 0.1 us,
#: and the request path compares or builds an OK status several times per operation.
_OK = Status.OK


class Operation(QuorumCollector):
    """One key of one ``execute`` / ``execute_many`` call: its fan-out, and (as a
    :class:`QuorumCollector`) the count of its replies and the future awaited for them."""

    __slots__ = (
        "batch",
        "command",
        "coord",
        "key",
        "n",
        "partition",
        "payload",
        "ring",
        "spares",
        "tick",
        "timeout",
        "used",
    )

    def __init__(
        self,
        coord: Coordinator,
        ring: Ring,
        namespace: str,
        command: Command,
        key: bytes,
        payload: bytes,
        partition: int,
        n: int,
        timeout: float,
        quorum: int,
        result: ExecuteResult,
        batch: BatchSender | None = None,
    ) -> None:
        # QuorumCollector.__init__'s work inline (one call less per operation). The loop is
        # the coordinator's (asyncio.get_running_loop() is a system call per call: see
        # Coordinator.loop).
        loop = coord.loop
        if loop is None:
            loop = coord.loop = asyncio.get_running_loop()
        self.future: asyncio.Future[ExecuteResult] = loop.create_future()
        self.result = result
        self.namespace = namespace
        self.name = command.name
        self.quorum = quorum
        self.expected = len(result.preference_list)
        self.successes = 0
        self.failures = 0
        self.coord = coord
        self.ring = ring
        self.command = command
        self.key = key
        self.payload = payload
        self.partition = partition
        self.n = n
        self.timeout = timeout
        self.batch = batch
        # The nodes asked so far: the preference list itself until a substitute or another
        # holder is added (then a set), so the common case allocates nothing for it.
        self.used: tuple[str, ...] | set[str] = ()
        # A quorum read's replicas not asked yet, in the order to ask them (None: every
        # replica was asked at the start); the tick of its speculative deadline in the
        # coordinator's wheel while one is armed (0: none).
        self.spares: list[str] | None = None
        self.tick = 0

    def start(self, prefs: tuple[str, ...]) -> None:
        """Send to every replica in ``prefs`` (suspected ones replaced when hinted).

        A read (``read_fanout="quorum"``) goes to a quorum of them only (see the module).
        """
        coord = self.coord
        me = coord.address
        self.used = prefs
        command = self.command
        if (
            command.reads
            and not command.mutates
            and coord.quorum_reads
            and self.quorum < len(prefs)
        ):
            self._start_read(prefs)
            return
        membership = coord.membership
        # is_suspected only while someone is (the common case: no call per replica).
        hinted = self.command.hinted and bool(membership.suspects)
        # Remote sends inline (no batch: one request each) on the hot path of ``execute``:
        # send_direct's call to the transport, without the call to send_direct.
        direct = self.batch is None
        submit = coord.transport.submit
        local = False
        for replica in prefs:
            if replica == me:
                local = True
                continue
            if hinted and membership.is_suspected(replica):
                substitute = self._substitute()
                if substitute is not None:
                    self.send(substitute, replica)
                    continue
            if direct:
                submit(
                    replica,
                    self,
                    "",
                    self.namespace,
                    command.name,
                    self.key,
                    self.payload,
                    self.partition,
                    self.timeout,
                )
            else:
                self.send(replica, "")
        if local:  # last: remote requests are on their way while the handler runs
            self._run_here("")

    def _start_read(self, prefs: tuple[str, ...]) -> None:
        """Ask ``quorum`` replicas of ``prefs``; keep the others as spares."""
        coord = self.coord
        me = coord.address
        need = self.quorum
        # This node first when it replicates the key and can serve it now (a replica
        # still pulling the partition would make the read wait, then refuse).
        local = me in prefs and self.partition not in coord.sync.table.pending  # readable()
        if local:
            need -= 1
        membership = coord.membership
        suspects = membership.suspects  # is_suspected only while someone is
        ask: list[str] = []
        spares: list[str] = []
        suspected: list[str] = []
        for replica in prefs:
            if replica == me:
                if not local:
                    suspected.append(replica)  # asked only when the others are missing
            elif suspects and membership.is_suspected(replica):
                suspected.append(replica)
            elif need:
                ask.append(replica)
                need -= 1
            else:
                spares.append(replica)
        spares += suspected
        if need:  # not enough healthy replicas: the least bad spares, in order
            ask += spares[:need]
            del spares[:need]
        self.expected = len(ask) + local
        self.spares = spares
        direct = self.batch is None
        for replica in ask:
            if replica == me:
                self._run_here("")
            elif direct:
                coord.transport.submit(
                    replica,
                    self,
                    "",
                    self.namespace,
                    self.command.name,
                    self.key,
                    self.payload,
                    self.partition,
                    self.timeout,
                )
            else:
                self.send(replica, "")
        if local:  # last: remote requests are on their way while the handler runs
            self._run_here("")
        delay = coord.speculate_after
        if spares and delay is not None and not self.future.done():
            # An entry in the coordinator's DeadlineWheel (5 ms ticks, one timer per wheel),
            # not a timer per read.
            self.tick = coord.speculation.add(self, delay)

    def expire(self) -> None:
        """The quorum is still missing after ``read_speculate_after``: ask one more."""
        self.tick = 0
        coord = self.coord
        if self.future.done() or not self.spares or not coord.running:
            return
        coord.speculative_reads += 1
        self.expected += 1
        self.send(self.spares.pop(0), "")
        delay = coord.speculate_after
        if self.spares and delay is not None:
            self.tick = coord.speculation.add(self, delay)

    def _quorum_known(self) -> None:
        """Disarm the speculative deadline once the read's outcome is decided."""
        if self.future.done():
            self.coord.speculation.remove(self, self.tick)
            self.tick = 0

    def send(self, target: str, hint: str) -> None:
        """Ask ``target`` (for the replica ``hint`` when it stands in for one)."""
        coord = self.coord
        if target == coord.address:
            self._run_here(hint)
        elif self.batch is not None:
            self.batch.add(self, target, hint)
        else:
            self.send_direct(target, hint)

    def send_direct(self, target: str, hint: str) -> None:
        """One request to ``target`` for this key alone; its outcome comes back to
        :meth:`answered` / :meth:`on_response` / :meth:`on_done` (``Transport.submit``)."""
        self.coord.transport.submit(
            target,
            self,
            hint,
            self.namespace,
            self.command.name,
            self.key,
            self.payload,
            self.partition,
            self.timeout,
        )

    def _run_here(self, hint: str) -> None:
        coord = self.coord
        out = coord.dispatcher.dispatch(
            coord.address,
            self.namespace,
            self.command.name,
            self.key,
            self.payload,
            self.partition,
            hint,
            self.timeout,
        )
        if type(out) is bytes:  # take_local's common case, without the call
            # QuorumCollector.add's success case, inline.
            result = self.result
            if not result._complete:
                result.replies.append(Reply(coord.address, out, None))
                successes = self.successes = self.successes + 1
                if successes >= self.quorum and not self.future.done():
                    self.future.set_result(result)
                if successes + self.failures >= self.expected:
                    if result._callbacks is None:  # _finish, without its call
                        result._complete = True
                    else:
                        result._finish()
            if self.tick:
                self._quorum_known()
        else:
            self.take_local(hint, out)

    def take_local(self, hint: str, out: bytes | Response | Awaitable[Response]) -> None:
        """Count the outcome of a local run (``dispatch``'s answer, maybe awaitable)."""
        coord = self.coord
        me = coord.address
        if isinstance(out, bytes):
            out = Response(_OK, out, "")
        if isinstance(out, Response):
            self.settle_response(me, hint, out)
            return
        task = asyncio.ensure_future(out)
        coord.track(task)
        task.add_done_callback(partial(self._local_done, hint))

    def _local_done(self, hint: str, task: asyncio.Future[Response]) -> None:
        me = self.coord.address
        if task.cancelled():
            self.settle(me, hint, RequestTimeoutError(f"run on {me} cancelled"), forward=False)
            return
        self.settle_response(me, hint, task.result())

    def on_done(self, target: str, hint: str, fut: asyncio.Future[Response]) -> None:
        """A direct request to ``target`` finished."""
        sync = self.coord.sync
        if fut.cancelled():
            err = RequestTimeoutError(f"request to {target} cancelled")
            self.settle(target, hint, err, forward=False)
            return
        exc = fut.exception()
        if exc is not None:
            unreachable = isinstance(exc, PeerUnavailableError | RequestTimeoutError)
            if unreachable:
                sync.peer_failed(target)
            self.settle(target, hint, exc, forward=unreachable)
            return
        membership = self.coord.membership
        if membership.suspects or membership.downs:  # else peer_ok has nothing to clear
            sync.peer_ok(target)
        self.settle_response(target, hint, fut.result())

    def answered(self, target: str, hint: str, payload: bytes) -> None:
        """``target`` answered a direct request with a success (the connection's reader
        calls this, see ``Transport.submit``): ``on_done`` without the future, the
        ``Response`` and ``settle_response``."""
        membership = self.coord.membership
        if membership.suspects or membership.downs:  # else peer_ok has nothing to clear
            self.coord.sync.peer_ok(target)
        # QuorumCollector.add's success case, inline.
        result = self.result
        if not result._complete:
            result.replies.append(Reply(target, payload, None))
            successes = self.successes = self.successes + 1
            if successes >= self.quorum and not self.future.done():
                self.future.set_result(result)
            if successes + self.failures >= self.expected:
                if result._callbacks is None:  # _finish, without its call
                    result._complete = True
                else:
                    result._finish()
        if self.tick:
            self._quorum_known()

    def on_response(self, target: str, hint: str, response: Response) -> None:
        """``target`` answered a direct request with an error status."""
        membership = self.coord.membership
        if membership.suspects or membership.downs:  # else peer_ok has nothing to clear
            self.coord.sync.peer_ok(target)
        self.settle_response(target, hint, response)

    def settle_response(self, target: str, hint: str, response: Response) -> None:
        """Count ``target``'s answer (the same mapping for local and remote runs)."""
        if response.status == _OK:
            self.add(Reply(target, response.payload, None))
            if self.tick:
                self._quorum_known()
            return
        status = Status(response.status)
        err = error_for_status(status, response.error, target)
        # UNAVAILABLE from a node that answered: it is up but cannot serve this now
        # (pulling the partition, stopping): another holder may.
        self.settle(target, hint, err, forward=status is Status.UNAVAILABLE)

    def settle(self, target: str, hint: str, err: BaseException, *, forward: bool) -> None:
        """Count a failure, or first try a substitute / previous holder in its place."""
        spares = self.spares
        if spares and self.coord.running and not self.future.done():
            # A quorum read: a replica not asked yet takes the failed one's place.
            self.coord.read_retries += 1
            self.send(spares.pop(0), "")
            return
        if forward and self.coord.running:
            if self.command.hinted:
                substitute = self._substitute()
                if substitute is not None:
                    self.send(substitute, hint or target)
                    return
            elif self.command.reads:
                holder = self._previous_holder()
                if holder is not None:
                    self.send(holder, hint or target)
                    return
        self.add(Reply(target, b"", err))
        if self.tick:
            self._quorum_known()

    def use(self, node: str) -> None:
        """Record that ``node`` is asked too."""
        used = self.used
        if isinstance(used, set):
            used.add(node)
        else:
            self.used = {*used, node}

    def _substitute(self) -> str | None:
        """The next node of the ring walk beyond the first N that is not suspected."""
        ring = self.ring
        size = len(ring)
        if size <= self.n:
            return None
        walk = ring.preference_list(self.partition, min(size, self.n + max(self.n, 3)))
        coord = self.coord
        membership = coord.membership
        me = coord.address
        for candidate in walk[self.n :]:
            if candidate in self.used:
                continue
            if candidate != me and membership.is_suspected(candidate):
                continue
            self.use(candidate)
            return candidate
        return None

    def _previous_holder(self) -> str | None:
        """A node that replicated the partition before the last ring change."""
        coord = self.coord
        candidates: list[str] = list(coord.sync.read_fallbacks(self.partition))
        previous = coord.previous_ring
        if previous is not None and previous.partitions == self.ring.partitions:
            candidates.extend(previous.preference_list(self.partition, self.n))
        membership = coord.membership
        for candidate in candidates:
            if candidate in self.used or membership.is_suspected(candidate):
                continue
            if membership.is_down(candidate):
                continue
            self.use(candidate)
            return candidate
        return None


#: (operation, hint) queued for one peer.
_Entry = tuple[Operation, str]


class BatchSender:
    """Queues the sends of many operations and flushes one request per peer."""

    __slots__ = ("_coord", "_frame_budget", "_name", "_namespace", "_pending", "_scheduled")

    def __init__(self, coord: Coordinator, namespace: str, name: str, frame_budget: int) -> None:
        self._coord = coord
        self._namespace = namespace
        self._name = name
        self._frame_budget = frame_budget
        self._pending: dict[str, list[_Entry]] = {}
        self._scheduled = False

    def add(self, op: Operation, target: str, hint: str) -> None:
        """Queue ``op``'s item for ``target``; it leaves at the next flush."""
        entries = self._pending.get(target)
        if entries is None:
            self._pending[target] = [(op, hint)]
        else:
            entries.append((op, hint))
        if not self._scheduled:
            # Sends made from callbacks (substitutes, forwarding) leave together too.
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Send every queued item: one request per peer (more only past the budget)."""
        self._scheduled = False
        pending, self._pending = self._pending, {}
        for target, entries in pending.items():
            chunk: list[_Entry] = []
            size = 0
            for op, hint in entries:
                grow = item_size(op.key, op.payload, hint)
                if chunk and size + grow > self._frame_budget:
                    self._send(target, chunk)
                    chunk, size = [], 0
                chunk.append((op, hint))
                size += grow
            self._send(target, chunk)

    def _send(self, target: str, entries: list[_Entry]) -> None:
        if len(entries) == 1:  # a single item needs no batch framing
            op, hint = entries[0]
            op.send_direct(target, hint)
            return
        items = [BatchItem(op.key, op.payload, op.partition, hint) for op, hint in entries]
        timeout = max(op.timeout for op, _ in entries)
        request = Request(
            BATCH, self._name, b"", encode_items(self._namespace, items), 0, "", timeout
        )
        fut = self._coord.transport.request(target, request)
        fut.add_done_callback(partial(self._on_done, target, entries))

    def _on_done(self, target: str, entries: list[_Entry], fut: asyncio.Future[Response]) -> None:
        try:
            self._settle(target, entries, fut)
        finally:
            self.flush()  # substitutes and forwards chosen while settling leave now

    def _settle(self, target: str, entries: list[_Entry], fut: asyncio.Future[Response]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            for op, hint in entries:
                op.on_done(target, hint, fut)
            return
        response = fut.result()
        if response.status == Status.UNKNOWN_COMMAND:
            # A peer of an older version, without batches: one request per item.
            for op, hint in entries:
                op.send_direct(target, hint)
            return
        self._coord.sync.peer_ok(target)
        if response.status != _OK:
            for op, hint in entries:
                op.settle_response(target, hint, response)
            return
        try:
            answers = decode_results(response.payload, len(entries))
        except InvalidArgumentError as err:
            for op, hint in entries:
                op.settle(target, hint, err, forward=False)
            return
        for (op, hint), answer in zip(entries, answers, strict=True):
            op.settle_response(target, hint, answer)
