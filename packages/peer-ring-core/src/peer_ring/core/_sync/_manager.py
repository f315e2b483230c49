"""The asyncio driver of data movement: probes, pulls, handoffs, hints, anti-entropy.

Every decision is taken by the pure parts (:class:`PartitionTable`, :class:`HintStore`,
:class:`AntiEntropyPlanner`, :func:`decide_pull`, the digest functions); this module only
moves bytes and time. Two long-lived tasks per node:

* the **probe loop** pings every discovered peer each ``probe_interval``: a failure feeds
  suspicion, a peer suspected without interruption for ``down_after`` is marked down (the
  ring shrinks, the survivors re-replicate), a peer that answers again is put back, a peer
  that says it is leaving is taken out, and one that restarted after leaving comes back;
* the **work loop** starts, one at a time of each kind, a pull round (partitions this node
  must pull), a handoff round (partitions it must hand off then drop), hint deliveries
  (one task per reachable target) and anti-entropy rounds; it sleeps on the node's clock
  until the next due time or until something wakes it (a ring change, a peer answering
  again, a finished round).

Internal commands (namespace ``__peer_ring__``) are answered here: ``ping``, ``digests``,
``handoff`` and ``leaving``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Coroutine, Sequence
from typing import Any

from peer_ring.core._clock import Clock
from peer_ring.core._config import PeerRingConfig
from peer_ring.core._errors import (
    InvalidArgumentError,
    PeerRingError,
    PeerUnavailableError,
    RequestTimeoutError,
)
from peer_ring.core._hooks import DataHooks
from peer_ring.core._membership import Membership
from peer_ring.core._ring import Ring
from peer_ring.core._status import error_for_status
from peer_ring.core._sync._antientropy import AntiEntropyPlanner, jittered
from peer_ring.core._sync._digests import (
    HoldState,
    NamespaceDigests,
    RemotePartition,
    buckets_to_pull,
    is_empty,
    partition_root,
)
from peer_ring.core._sync._hints import Hint, HintStore
from peer_ring.core._sync._leave import LeaveReport, gains_after_leave
from peer_ring.core._sync._partitions import PartitionTable, PullOutcome, decide_pull
from peer_ring.core._sync._wire import (
    FLAG_LEAVING,
    INTERNAL,
    decode_digest_request,
    decode_digest_response,
    decode_partitions,
    decode_ping,
    decode_u32,
    decode_u64,
    encode_digest_request,
    encode_digest_response,
    encode_partitions,
    encode_ping,
    encode_u32,
    encode_u64,
)
from peer_ring.core._types import Request, Response, Status
from peer_ring.core.transport._base import Transport

logger = logging.getLogger(__name__)

#: Digests fetched at the start of a pull round are reused for this long; a transfer that
#: waited longer for its slot asks for fresh ones (see ``_pull_round``).
_DIGESTS_FRESH_FOR = 0.2

#: Streams the records of one partition (bucket-restricted) from a peer.
TransferFn = Callable[[str, str, int, Collection[int]], AsyncIterator[list[bytes]]]
#: Runs a write on this node as if a coordinator had sent it (hint redirection).
LocalWriteFn = Callable[[str, str, bytes, bytes], Awaitable[None]]

# Partitions per ``handoff`` request: the receiver pulls them while the sender waits.
_HANDOFF_BATCH = 128


class SyncManager:
    """Data movement of one node (see the module docstring).

    Args:
        address: this node's address.
        config: the node's configuration.
        clock: the node's clock.
        membership: the node's membership view (ring listener registered by the node).
        transport: the node's transport.
        hooks: the node's data hooks by namespace (the live dict: hooks registered later
            are seen).
        transfer: the node's ``transfer`` (bulk pull of a partition from a peer).
        local_write: runs a write locally (used when a hint is redirected to this node).
        rng: randomness for jitter and incarnations (seed it for reproducible tests).
    """

    def __init__(
        self,
        address: str,
        config: PeerRingConfig,
        clock: Clock,
        membership: Membership,
        transport: Transport,
        hooks: dict[str, DataHooks],
        transfer: TransferFn,
        local_write: LocalWriteFn,
        rng: random.Random | None = None,
    ) -> None:
        self._me = address
        self._cfg = config
        self._clock = clock
        self._membership = membership
        self._transport = transport
        self._hooks = hooks
        self._transfer = transfer
        self._local_write = local_write
        self._rng = rng or random.Random()
        self.incarnation = self._rng.getrandbits(63) or 1
        self._n = config.replication
        self.table = PartitionTable(
            address,
            config.replication,
            handoff_delay=config.handoff_delay,
            handoff_retention=config.handoff_retention,
            retry_initial=config.sync_retry_initial,
            retry_max=config.sync_retry_max,
            give_up_after=config.sync_give_up_after,
        )
        self.hints = HintStore(config.hint_max, config.hint_max_bytes, config.hint_ttl)
        self._planner = AntiEntropyPlanner(address, config.anti_entropy_batch)
        self._incarnations: dict[str, int] = {}
        self._leaving = False
        self._left = False
        self._leave_report: LeaveReport | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._pull_task: asyncio.Task[None] | None = None
        self._handoff_task: asyncio.Task[None] | None = None
        self._ae_task: asyncio.Task[None] | None = None
        self._delivering: set[str] = set()
        self._probing: set[str] = set()
        self._wake = asyncio.Event()
        self._probe_wake = asyncio.Event()
        self._progress: asyncio.Future[None] | None = None
        self._stopped = False
        self._ready = asyncio.Event()
        self._ae_next = 0.0
        self._started_at = 0.0
        # counters beyond the table's and the hint store's
        self.records_received = 0
        self.bytes_received = 0
        self.ae_rounds = 0
        self.ae_partitions_compared = 0
        self.ae_partitions_repaired = 0
        self.ae_records_received = 0
        self.probes_failed = 0

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once the initial pull finished (stays true afterwards)."""
        return self.table.ready

    async def wait_ready(self) -> None:
        """Wait until :attr:`ready`."""
        await self._ready.wait()

    def start(self) -> None:
        """Plan the initial pull and start the loops (the ring must be known)."""
        now = self._clock.monotonic()
        self._started_at = now
        self._stopped = False
        self._ready = asyncio.Event()
        self.table.start(self._membership.ring, now)
        if not self._hooks or len(self._membership.discovered) == 1:
            # Nothing to move (no application data), or nobody to pull from.
            self.table.mark_all_synced()
        total = len(self.table.pending)
        if total:
            logger.info(
                "node %s: initial sync of %d partition(s) from %d peer(s)",
                self._me,
                total,
                len(self._membership.ring) - 1,
            )
        self._note_ready()
        interval = self._cfg.anti_entropy_interval
        if interval is not None:
            self._ae_next = now + jittered(interval, self._rng)
        self._loops = [
            asyncio.create_task(self._probe_loop(), name=f"peer-ring-probe-{self._me}"),
            asyncio.create_task(self._work_loop(), name=f"peer-ring-sync-{self._me}"),
        ]

    async def stop(self) -> None:
        """Cancel every task of the manager."""
        self._stopped = True
        self._progress_made()
        tasks = [*self._loops, *self._tasks]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._loops = []
        self._tasks.clear()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=f"{name}-{self._me}")
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            self._wake.set()
            if not t.cancelled() and (exc := t.exception()) is not None:
                logger.error("%s failed on %s", name, self._me, exc_info=exc)

        task.add_done_callback(done)
        return task

    async def _sleep_or(self, event: asyncio.Event | asyncio.Future[None], delay: float) -> None:
        """Sleep ``delay`` seconds of the node's clock, or less if ``event`` is set."""
        if event.is_set() if isinstance(event, asyncio.Event) else event.done():
            return
        sleeper = asyncio.ensure_future(self._clock.sleep(max(delay, 0.0)))
        waiter: asyncio.Future[Any]
        if isinstance(event, asyncio.Event):
            waiter = asyncio.ensure_future(event.wait())
        else:
            waiter = asyncio.ensure_future(asyncio.shield(event))
        try:
            await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waiter.cancel()

    def _progress_made(self) -> None:
        """Wake everyone waiting for pulls to progress (a round ended, the ring changed)."""
        fut, self._progress = self._progress, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def _wait_progress(self, timeout: float) -> None:
        if self._progress is None:
            self._progress = asyncio.get_running_loop().create_future()
        await self._sleep_or(self._progress, timeout)

    async def wait_readable(self, partition: int, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``partition`` to become readable.

        A read that reaches a replica still pulling the partition waits a little before
        it is refused: a cluster that has just started pulls in milliseconds, and the read
        then succeeds instead of failing its quorum.
        """
        deadline = self._clock.monotonic() + timeout
        while not self.readable(partition):
            left = deadline - self._clock.monotonic()
            if left <= 0 or self._stopped:
                return False
            await self._wait_progress(left)
        return True

    def _note_ready(self) -> None:
        if self.table.ready and not self._ready.is_set():
            self._ready.set()
            elapsed = self._clock.monotonic() - self._started_at
            logger.info(
                "node %s ready: initial sync of %d partition(s) finished in %.1fs",
                self._me,
                self.table.initial_total,
                elapsed,
            )

    # -- observations from the node ------------------------------------------------------

    def on_ring_change(self, old: Ring, new: Ring) -> None:
        """Ring listener: plan pulls of gained partitions and handoffs of lost ones."""
        change = self.table.ring_changed(old, new, self._clock.monotonic())
        self._progress_made()
        if change.gained or change.lost:
            logger.info(
                "node %s: ring change gains %d partition(s) to pull and loses %d to hand off",
                self._me,
                len(change.gained),
                len(change.lost),
            )
        self._wake.set()

    def peer_ok(self, peer: str) -> None:
        """A round trip initiated by this node succeeded: ``peer`` is reachable."""
        if self._membership.clear(peer):
            self._peer_back(peer)
        if self._membership.is_down(peer):
            self._mark_up(peer)

    def peer_failed(self, peer: str) -> None:
        """A request to ``peer`` failed at the transport level (unreachable, timeout)."""
        self._membership.suspect(peer)

    def inbound(self, peer: str) -> None:
        """``peer`` sent this node a request (called for every request: keep it cheap).

        That it can send proves little (a peer too slow to answer, or reachable one way
        only, still sends), so a suspected or down peer is not cleared here: it is probed
        at once, and only the answer to the probe clears it.
        """
        membership = self._membership
        if membership.maybe_suspected(peer) or membership.is_down(peer):
            self._probe_soon(peer)

    def reachability(self, peer: str, reachable: bool) -> None:
        """Transport reachability report (a stream to ``peer`` opened or broke)."""
        if not reachable:
            self._membership.suspect(peer)
            return
        # The peer accepted a connection this node opened: a real answer.
        if self._membership.clear(peer):
            self._peer_back(peer)
        if self._membership.is_down(peer):
            self._probe_soon(peer)

    def _probe_soon(self, peer: str) -> None:
        if peer not in self._probing and self._loops:
            self._probing.add(peer)
            self._spawn(self._probe(peer), "peer-ring-probe")

    def _mark_up(self, peer: str) -> None:
        if self._membership.mark_up(peer):
            # It missed every write while it was out of the ring (paused, partitioned):
            # ask it to pull what it shares with us, rather than wait for anti-entropy.
            self._spawn(self._catch_up(peer), "peer-ring-catch-up")

    async def _catch_up(self, peer: str) -> None:
        ring = self._membership.ring
        pending = self.table.pending
        shared = [
            p
            for p in sorted(self.table.replicated)
            if p not in pending and peer in ring.preference_list(p, self._n)
        ]
        confirmed = 0
        for i in range(0, len(shared), _HANDOFF_BATCH):
            batch = shared[i : i + _HANDOFF_BATCH]
            try:
                data = await self._ask(
                    peer, "handoff", encode_partitions(batch), self._cfg.handoff_timeout
                )
            except PeerRingError as exc:
                logger.info("catch-up of %s stopped: %s (anti-entropy will finish)", peer, exc)
                return
            confirmed += len(decode_partitions(data))
        logger.info(
            "node %s: %s is back; it synced %d of the %d partition(s) we share",
            self._me,
            peer,
            confirmed,
            len(shared),
        )

    def _peer_back(self, peer: str) -> None:
        now = self._clock.monotonic()
        self.table.retry_now(now)
        self.hints.retry_now(peer)
        self._wake.set()

    # -- admission (called by the node on the request path) ------------------------------

    def readable(self, partition: int) -> bool:
        """Whether this node may answer reads of ``partition`` (it is not pulling it)."""
        return partition not in self.table.pending

    def holds(self, partition: int) -> bool:
        """Whether this node holds a complete copy of ``partition`` (for forwarded reads)."""
        return self.table.state(partition) is HoldState.COMPLETE

    def note_write(self, partition: int) -> None:
        """A write of ``partition`` is stored here (hold it if nobody expects it here)."""
        table = self.table
        if partition in table.replicated or partition in table.held:
            return
        if table.note_stray(partition, self._clock.monotonic()):
            self._wake.set()

    def read_fallbacks(self, partition: int) -> tuple[str, ...]:
        """Nodes that replicated a partition this node is still pulling (they keep
        serving it until the handoff completes: Riak-style forwarding)."""
        return self.table.holders(partition)

    def store_hint(self, request: Request) -> Response:
        """Keep a hinted write for its intended replica (Dynamo §4.6)."""
        hint = Hint(
            request.hint,
            request.namespace,
            request.command,
            request.key,
            request.payload,
            request.partition,
            self._clock.monotonic(),
        )
        if not self.hints.add(hint):
            return Response(
                Status.OVERLOADED, b"", f"hint store of {self._me} is full ({len(self.hints)})"
            )
        return Response(Status.OK, b"", "")

    # -- internal commands ---------------------------------------------------------------

    def on_internal(self, source: str, request: Request) -> Response | Awaitable[Response]:
        """Answer one internal command."""
        try:
            command = request.command
            if command == "ping":
                return self._h_ping(source, request.payload)
            if command == "digests":
                return self._h_digests(request.payload)
            if command == "handoff":
                return self._guard(self._h_handoff(source, request.payload))
            if command == "leaving":
                return self._guard(self._h_leaving(source, request.payload, request.timeout))
        except (ValueError, IndexError) as exc:
            return Response(Status.INVALID_ARGUMENT, b"", f"bad {request.command} payload: {exc}")
        return Response(Status.UNKNOWN_COMMAND, b"", f"unknown internal command {command!r}")

    async def _guard(self, coro: Awaitable[bytes]) -> Response:
        try:
            return Response(Status.OK, await coro, "")
        except asyncio.CancelledError:
            raise
        except (ValueError, IndexError) as exc:
            return Response(Status.INVALID_ARGUMENT, b"", str(exc))
        except PeerRingError as exc:
            return Response(Status.ERROR, b"", f"{type(exc).__name__}: {exc}")

    def _h_ping(self, source: str, payload: bytes) -> Response:
        incarnation, flags = decode_ping(payload)
        self._observe_incarnation(source, incarnation, flags, confirmed=False)
        self.inbound(source)
        flags_out = FLAG_LEAVING if self._leaving else 0
        return Response(Status.OK, encode_ping(self.incarnation, flags_out), "")

    def _h_digests(self, payload: bytes) -> Response:
        entries = []
        partitions = self._cfg.partitions
        for p, root in decode_digest_request(payload):
            if not 0 <= p < partitions:
                raise ValueError(f"partition {p} out of range")
            state = self.table.state(p)
            if state is HoldState.NONE:
                entries.append(RemotePartition(p, state, False, {}))
                continue
            digests = self._local_digests(p)
            equal = partition_root(digests) == root
            entries.append(RemotePartition(p, state, equal, {} if equal else digests))
        return Response(Status.OK, encode_digest_response(entries), "")

    async def _h_handoff(self, source: str, payload: bytes) -> bytes:
        """``source`` lost these partitions: pull what differs from it, then confirm.

        A partition this node is still pulling is merged but not confirmed: the source
        must keep it (and keep answering forwarded reads) until this node serves it.
        """
        wanted = [p for p in decode_partitions(payload) if p in self.table.replicated]
        if not wanted:
            return encode_partitions([])
        remote = await self._fetch_digests(source, wanted)
        confirmed: list[int] = []
        sem = asyncio.Semaphore(self._cfg.sync_concurrency)

        fetched_at = self._clock.monotonic()

        async def one(p: int) -> None:
            entry = remote.get(p)
            if entry is None:
                return
            if not (entry.state is HoldState.NONE or entry.equal):
                async with sem:
                    if self._clock.monotonic() - fetched_at > _DIGESTS_FRESH_FOR:
                        # Stale after waiting for a slot: see _pull_round.
                        entry = (await self._fetch_digests(source, [p])).get(p, entry)
                    if entry.equal:
                        pass
                    elif await self._merge_from(source, p, entry.digests) is None:
                        return
            if p not in self.table.pending:
                confirmed.append(p)

        await asyncio.gather(*(one(p) for p in wanted))
        return encode_partitions(sorted(confirmed))

    async def _h_leaving(self, source: str, payload: bytes, timeout: float) -> bytes:
        """``source`` leaves: take it out of the ring, pull what we gain, then answer."""
        incarnation = decode_u64(payload)
        before = self._membership.ring
        self._incarnations[source] = incarnation
        self._membership.mark_left(source, incarnation)
        after = self._membership.ring
        gained = after.partitions_of(self._me, self._n) - before.partitions_of(self._me, self._n)
        self._wake.set()
        # Answer a little before the leaver's deadline, so that it hears how far we got.
        if timeout <= 0:
            timeout = self._cfg.handoff_timeout
        budget = max(timeout - min(1.0, timeout * 0.1), 0.0)
        deadline = self._clock.monotonic() + budget
        while True:
            remaining = [p for p in gained if p in self.table.pending]
            left = deadline - self._clock.monotonic()
            if not remaining or left <= 0:
                break
            await self._wait_progress(left)
        if remaining:
            logger.warning(
                "%s left before %d partition(s) were pulled; they stay pending",
                source,
                len(remaining),
            )
        return encode_u32(len(remaining))

    def _observe_incarnation(
        self, peer: str, incarnation: int, flags: int, confirmed: bool
    ) -> None:
        known = self._incarnations.get(peer)
        self._incarnations[peer] = incarnation
        membership = self._membership
        if flags & FLAG_LEAVING:
            membership.mark_left(peer, incarnation)
            return
        left = membership.left_incarnation(peer)
        if left is not None and left != incarnation:
            membership.forget_left(peer)
        elif known is not None and known != incarnation:
            logger.info("peer %s restarted (new incarnation)", peer)
        if confirmed and membership.is_down(peer):
            self._mark_up(peer)

    # -- requests ------------------------------------------------------------------------

    async def _ask(self, peer: str, command: str, payload: bytes, timeout: float) -> bytes:
        fut = self._transport.request(
            peer, Request(INTERNAL, command, b"", payload, 0, "", timeout)
        )
        try:
            response = await fut
        except (PeerUnavailableError, RequestTimeoutError):
            self.peer_failed(peer)
            raise
        self.peer_ok(peer)
        if response.status != Status.OK:
            raise error_for_status(Status(response.status), response.error, peer)
        return response.payload

    def _local_digests(self, partition: int) -> dict[str, Sequence[bytes]]:
        return {ns: hooks.digest_partition(partition) for ns, hooks in self._hooks.items()}

    async def _fetch_digests(
        self, peer: str, partitions: list[int], roots_of: dict[int, int] | None = None
    ) -> dict[int, RemotePartition]:
        """Ask ``peer`` for its digests of ``partitions`` (only those whose root differs
        from ours come back with bucket digests)."""
        if roots_of is None:
            roots_of = {p: partition_root(self._local_digests(p)) for p in partitions}
        roots = [(p, roots_of[p]) for p in partitions]
        data = await self._ask(
            peer, "digests", encode_digest_request(roots), self._cfg.request_timeout
        )
        return {entry.partition: entry for entry in decode_digest_response(data)}

    async def _merge_from(self, peer: str, partition: int, remote: NamespaceDigests) -> int | None:
        """Pull the buckets of ``partition`` that differ from ``peer``'s digests.

        Returns the number of records received, or None when the transfer failed.
        """
        received = 0
        for namespace, hooks in sorted(self._hooks.items()):
            theirs = remote.get(namespace)
            if theirs is None:
                continue
            buckets = buckets_to_pull(hooks.digest_partition(partition), theirs)
            if not buckets:
                continue
            try:
                async for chunk in self._transfer(peer, namespace, partition, buckets):
                    self.note_write(partition)
                    hooks.apply_records(partition, chunk)
                    received += len(chunk)
                    self.bytes_received += sum(len(r) for r in chunk)
            except (PeerRingError, ValueError) as exc:
                logger.info(
                    "pulling partition %d of %s from %s failed: %s", partition, namespace, peer, exc
                )
                return None
        self.records_received += received
        return received

    # -- probe loop ----------------------------------------------------------------------

    async def _probe_loop(self) -> None:
        while True:
            self._probe_wake.clear()
            peers = [a for a in self._membership.discovered if a != self._me]
            if peers:
                await asyncio.gather(*(self._probe(p) for p in peers))
            self._check_down()
            await self._sleep_or(self._probe_wake, self._cfg.probe_interval)

    async def _probe(self, peer: str) -> None:
        flags = FLAG_LEAVING if self._leaving else 0
        try:
            payload = await self._ask(
                peer, "ping", encode_ping(self.incarnation, flags), self._cfg.probe_timeout
            )
        except PeerRingError:
            self.probes_failed += 1
            return
        finally:
            self._probing.discard(peer)
        try:
            incarnation, peer_flags = decode_ping(payload)
        except ValueError:
            return
        self._observe_incarnation(peer, incarnation, peer_flags, confirmed=True)

    def _check_down(self) -> None:
        after = self._cfg.down_after
        if after is None:
            return
        membership = self._membership
        for peer in membership.suspected:
            if peer in membership.down or membership.left_incarnation(peer) is not None:
                continue
            if membership.suspected_for(peer) >= after:
                membership.mark_down(peer)

    # -- work loop -----------------------------------------------------------------------

    async def _work_loop(self) -> None:
        cfg = self._cfg
        while True:
            self._wake.clear()
            now = self._clock.monotonic()
            table = self.table
            if _idle(self._pull_task):
                due = table.due_pulls(now, cfg.sync_batch)
                if due:
                    self._pull_task = self._spawn(self._pull_round(due), "peer-ring-pull")
            if _idle(self._handoff_task):
                due = table.due_handoffs(now, cfg.sync_batch)
                if due:
                    self._handoff_task = self._spawn(self._handoff_round(due), "peer-ring-handoff")
            self.hints.expire(now)
            ring = self._membership.ring
            for target in self.hints.due_targets(now):
                if target in self._delivering:
                    continue
                if target in ring and self._membership.is_suspected(target):
                    continue
                self._delivering.add(target)
                self._spawn(self._deliver_hints(target), "peer-ring-hints")
            interval = cfg.anti_entropy_interval
            if interval is not None and now >= self._ae_next and table.ready:
                if _idle(self._ae_task):
                    self._ae_task = self._spawn(self._anti_entropy_round(), "peer-ring-ae")
                self._ae_next = now + jittered(interval, self._rng)
            delay = cfg.probe_interval
            next_due = table.next_due()
            if next_due is not None:
                delay = min(delay, max(next_due - now, 0.0))
            if interval is not None:
                delay = min(delay, max(self._ae_next - now, 0.0))
            if delay <= 0:
                delay = cfg.probe_interval  # due work is already running: wait for it
            await self._sleep_or(self._wake, delay)

    # -- pulls ---------------------------------------------------------------------------

    async def _pull_round(self, partitions: list[int]) -> None:
        """One attempt at pulling ``partitions``: digests from every live member, then
        the differing buckets from each holder, then judge each partition."""
        membership = self._membership
        epoch = self.table.epoch
        down = membership.down
        left = membership.left
        alive = [a for a in membership.discovered if a != self._me and a not in down]
        members = [a for a in alive if a not in left]
        candidates: dict[int, list[str]] = {}
        ask: dict[str, list[int]] = {}
        for p in partitions:
            holders = [h for h in self.table.holders(p) if h in alive]
            nodes = list(dict.fromkeys([*holders, *members]))
            candidates[p] = nodes
            for node in nodes:
                ask.setdefault(node, []).append(p)
        suspected = membership.suspected
        answers: dict[str, dict[int, RemotePartition]] = {}
        asked = {node: parts for node, parts in ask.items() if node not in suspected}
        if asked:
            # Our own roots once per round, whoever we ask (digests cost CPU on big stores).
            roots = {p: partition_root(self._local_digests(p)) for p in partitions}

            async def fetch(node: str, parts: list[int]) -> None:
                try:
                    answers[node] = await self._fetch_digests(node, parts, roots)
                except (PeerRingError, ValueError) as exc:
                    logger.debug("digests from %s failed: %s", node, exc)

            await asyncio.gather(*(fetch(node, parts) for node, parts in asked.items()))
        fetched_at = self._clock.monotonic()
        sem = asyncio.Semaphore(self._cfg.sync_concurrency)
        ring = membership.ring
        give_up = self._cfg.sync_give_up_after

        def judge(p: int, sources: list[tuple[str, RemotePartition]], merged: bool) -> None:
            now = self._clock.monotonic()
            states = {node: entry.state for node, entry in sources}
            pending_for = self.table.pending_for(p, now)
            outcome = decide_pull(candidates[p], states, merged, pending_for, give_up)
            if outcome is PullOutcome.GAVE_UP:
                logger.warning(
                    "partition %d: no complete replica reachable for %.0fs; serving what was "
                    "pulled (anti-entropy repairs it later)",
                    p,
                    pending_for,
                )
            self.table.pull_result(p, outcome, now, epoch)

        async def merge(p: int, sources: list[tuple[str, RemotePartition]]) -> None:
            merged_complete = False
            async with sem:
                merged_any = False
                for node, entry in sources:
                    if entry.state is HoldState.NONE:
                        continue
                    stale = self._clock.monotonic() - fetched_at > _DIGESTS_FRESH_FOR
                    if (merged_any or stale) and not entry.equal:
                        # The round's digests predate the merge we just did (or the wait for
                        # a transfer slot), and under load every bucket written since then
                        # differs from them: comparing against them would re-send whole
                        # buckets we already have. Ask again, right before the transfer.
                        try:
                            fresh = await self._fetch_digests(node, [p])
                        except (PeerRingError, ValueError) as exc:
                            logger.debug("digests from %s failed: %s", node, exc)
                            continue
                        if p not in fresh:
                            continue
                        entry = fresh[p]
                    ok = entry.equal or await self._merge_from(node, p, entry.digests) is not None
                    merged_any = merged_any or ok
                    if ok and entry.state is HoldState.COMPLETE:
                        merged_complete = True
            judge(p, sources, merged_complete)

        transfers = []
        for p in partitions:
            if p not in self.table.pending:
                continue
            sources = [
                (node, answers[node][p]) for node in candidates[p] if p in answers.get(node, {})
            ]
            if all(entry.equal or entry.state is HoldState.NONE for _, entry in sources):
                # Nothing to transfer (the common case of empty or identical copies):
                # judged at once, without a task per partition.
                complete = any(entry.state is HoldState.COMPLETE for _, entry in sources)
                judge(p, sources, complete)
                continue
            order = [*self.table.holders(p), *ring.preference_list(p, self._n)]
            rank = {node: i for i, node in reversed(list(enumerate(order)))}
            # Complete copies first, previous holders first among them.
            sources.sort(
                key=lambda item: (
                    item[1].state is not HoldState.COMPLETE,
                    rank.get(item[0], len(order)),
                )
            )
            transfers.append(merge(p, sources))
        before = len(partitions)
        await asyncio.gather(*transfers)
        done = sum(1 for p in partitions if p not in self.table.pending)
        self._progress_made()
        if done:
            after = len(self.table.pending)
            if self._ready.is_set():
                logger.info("node %s: pulled %d partition(s), %d pending", self._me, done, after)
            else:
                total = self.table.initial_total
                logger.info(
                    "node %s: initial sync %d/%d partitions done (%d in this round of %d)",
                    self._me,
                    max(total - after, 0),
                    total,
                    done,
                    before,
                )
        self._note_ready()

    # -- handoffs ------------------------------------------------------------------------

    async def _handoff_round(self, partitions: list[int]) -> None:
        """Hand held partitions to their current replicas; drop the confirmed ones."""
        ring = self._membership.ring
        targets: dict[int, list[str]] = {}
        by_target: dict[str, list[int]] = {}
        for p in partitions:
            if p in self.table.replicated:
                continue
            if is_empty(self._local_digests(p)):
                self.table.drop_empty(p)
                self._drop(p)
                continue
            nodes = [n for n in ring.preference_list(p, self._n) if n != self._me]
            targets[p] = nodes
            for node in nodes:
                by_target.setdefault(node, []).append(p)
        confirmed: dict[str, set[int]] = {}
        suspected = self._membership.suspected

        async def hand(node: str, parts: list[int]) -> None:
            got: set[int] = set()
            confirmed[node] = got
            for i in range(0, len(parts), _HANDOFF_BATCH):
                batch = parts[i : i + _HANDOFF_BATCH]
                try:
                    data = await self._ask(
                        node, "handoff", encode_partitions(batch), self._cfg.handoff_timeout
                    )
                except PeerRingError as exc:
                    logger.debug(
                        "handoff of %d partition(s) to %s failed: %s", len(batch), node, exc
                    )
                    return
                got.update(decode_partitions(data))

        await asyncio.gather(
            *(hand(node, parts) for node, parts in by_target.items() if node not in suspected)
        )
        now = self._clock.monotonic()
        dropped = 0
        for p, nodes in targets.items():
            ok = bool(nodes) and all(p in confirmed.get(node, ()) for node in nodes)
            if self.table.handoff_result(p, ok, now):
                self._drop(p)
                dropped += 1
        if dropped:
            logger.info(
                "node %s: handed off and dropped %d partition(s), %d still held",
                self._me,
                dropped,
                len(self.table.held),
            )

    def _drop(self, partition: int) -> None:
        for hooks in self._hooks.values():
            hooks.drop_partition(partition)

    # -- hinted handoff ------------------------------------------------------------------

    async def _deliver_hints(self, target: str) -> None:
        delivered = 0
        try:
            while True:
                batch = self.hints.head(target, self._cfg.hint_batch)
                if not batch:
                    break
                if target in self._membership.ring:
                    ok = await self._deliver_batch(target, batch)
                else:
                    ok = await self._redirect_batch(batch)
                delivered += sum(1 for h in batch if ok.get(id(h)))
                if not all(ok.get(id(h)) for h in batch):
                    break
        finally:
            self._delivering.discard(target)
            if delivered:
                logger.info(
                    "node %s: delivered %d hinted write(s) for %s (%d left)",
                    self._me,
                    delivered,
                    target,
                    self.hints.pending().get(target, 0),
                )

    async def _deliver_batch(self, target: str, batch: list[Hint]) -> dict[int, bool]:
        timeout = self._cfg.request_timeout
        futs = [
            self._transport.request(
                target, Request(h.namespace, h.command, h.key, h.payload, h.partition, "", timeout)
            )
            for h in batch
        ]
        results = await asyncio.gather(*futs, return_exceptions=True)
        now = self._clock.monotonic()
        ok: dict[int, bool] = {}
        unreachable = False
        for hint, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                unreachable = True
                ok[id(hint)] = False
            elif result.status == Status.OK:
                self.hints.delivered(hint)
                ok[id(hint)] = True
            else:
                self.hints.refused(hint, now, result.error)
                ok[id(hint)] = False
        if unreachable:
            self.peer_failed(target)
            self.hints.unreachable(target, now)
        else:
            self.peer_ok(target)
        return ok

    async def _redirect_batch(self, batch: list[Hint]) -> dict[int, bool]:
        """The intended replica is out of the ring (down or left): give each hinted write
        to the key's current replicas instead, so that it is not lost with the hint."""
        ring = self._membership.ring
        timeout = self._cfg.request_timeout
        ok: dict[int, bool] = {}
        now = self._clock.monotonic()
        for hint in batch:
            nodes = ring.preference_list(ring.partition_for_key(hint.key), self._n)
            waits: list[Awaitable[object]] = []
            for node in nodes:
                if node == self._me:
                    waits.append(
                        self._local_write(hint.namespace, hint.command, hint.key, hint.payload)
                    )
                else:
                    request = Request(
                        hint.namespace,
                        hint.command,
                        hint.key,
                        hint.payload,
                        hint.partition,
                        "",
                        timeout,
                    )
                    waits.append(self._transport.request(node, request))
            results = await asyncio.gather(*waits, return_exceptions=True)
            good = all(
                not isinstance(r, BaseException)
                and (not isinstance(r, Response) or r.status == Status.OK)
                for r in results
            )
            ok[id(hint)] = good
            if good:
                self.hints.delivered(hint)
            else:
                self.hints.unreachable(hint.target, now)
        return ok

    # -- anti-entropy --------------------------------------------------------------------

    async def _anti_entropy_round(self) -> None:
        membership = self._membership
        unavailable = membership.suspected | membership.down
        plan = self._planner.next_round(membership.ring, self._n, self.readable, unavailable)
        compared = repaired = records = 0
        sem = asyncio.Semaphore(self._cfg.sync_concurrency)
        for peer, parts in plan.items():
            try:
                remote = await self._fetch_digests(peer, parts)
            except (PeerRingError, ValueError) as exc:
                logger.debug("anti-entropy with %s skipped: %s", peer, exc)
                continue
            compared += len(parts)

            async def one(p: int, entry: RemotePartition | None, peer: str = peer) -> int:
                if entry is None or entry.state is HoldState.NONE or entry.equal:
                    return 0
                async with sem:
                    got = await self._merge_from(peer, p, entry.digests)
                return got or 0

            results = await asyncio.gather(*(one(p, remote.get(p)) for p in parts))
            repaired += sum(1 for r in results if r)
            records += sum(results)
        self.ae_rounds += 1
        self.ae_partitions_compared += compared
        self.ae_partitions_repaired += repaired
        self.ae_records_received += records
        log = logger.info if records else logger.debug
        log(
            "node %s: anti-entropy round compared %d partition(s), repaired %d (%d records)",
            self._me,
            compared,
            repaired,
            records,
        )

    # -- leave ---------------------------------------------------------------------------

    @property
    def leave_state(self) -> str:
        """``"none"``, ``"leaving"`` or ``"left"``."""
        if self._left:
            return "left"
        return "leaving" if self._leaving else "none"

    async def leave(self, deadline: float) -> LeaveReport:
        """Tell every peer this node leaves and wait (up to ``deadline`` seconds) until
        they pulled what they gain. Does not stop the node."""
        if deadline <= 0:
            raise InvalidArgumentError(f"deadline must be > 0, got {deadline}")
        self._leaving = True
        start = self._clock.monotonic()
        ring = self._membership.ring
        gains = gains_after_leave(ring, self._me, self._n)
        peers = [m for m in ring.members if m != self._me]
        logger.info(
            "node %s leaving: handing %d partition replica(s) to %d peer(s) (deadline %.0fs)",
            self._me,
            sum(gains.values()),
            len(peers),
            deadline,
        )
        payload = encode_u64(self.incarnation)
        results = await asyncio.gather(
            *(self._ask(peer, "leaving", payload, deadline) for peer in peers),
            return_exceptions=True,
        )
        acknowledged: list[str] = []
        failed: dict[str, str] = {}
        missing: dict[str, int] = {}
        for peer, result in zip(peers, results, strict=True):
            if isinstance(result, BaseException):
                failed[peer] = f"{type(result).__name__}: {result}"
                if gains.get(peer):
                    missing[peer] = gains[peer]
                continue
            try:
                remaining = decode_u32(result)
            except (ValueError, IndexError):
                remaining = gains.get(peer, 0)
            if remaining:
                missing[peer] = remaining
            else:
                acknowledged.append(peer)
        report = LeaveReport(
            tuple(sorted(acknowledged)),
            dict(sorted(failed.items())),
            dict(sorted(missing.items())),
            self._clock.monotonic() - start,
        )
        self._left = True
        self._leave_report = report
        if report.complete:
            logger.info(
                "node %s left: every peer confirmed its partitions in %.1fs",
                self._me,
                report.elapsed,
            )
        else:
            logger.warning(
                "node %s left without a complete handoff: failed peers %s, partitions not "
                "confirmed %s (the other replicas still hold them)",
                self._me,
                sorted(failed),
                dict(missing),
            )
        return report

    # -- status --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The data-movement state of this node (JSON-friendly)."""
        table = self.table
        c = table.counters
        h = self.hints.counters
        membership = self._membership
        report = self._leave_report
        return {
            "ready": table.ready,
            "partitions": {
                "replicated": len(table.replicated),
                "pending": len(table.pending),
                "held_for_handoff": len(table.held),
                "initial_total": table.initial_total,
                "synced": c.synced,
                "nothing_to_pull": c.nothing_to_pull,
                "given_up": c.given_up,
                "pull_retries": c.retries,
                "gained": c.gained,
                "lost": c.lost,
                "stray": c.stray,
                "handed_off": c.handed_off,
                "dropped": c.dropped,
                "dropped_unconfirmed": c.dropped_unconfirmed,
                "records_received": self.records_received,
                "bytes_received": self.bytes_received,
            },
            "hints": {
                "pending": self.hints.pending(),
                "pending_total": len(self.hints),
                "pending_bytes": self.hints.size_bytes,
                "stored": h.stored,
                "delivered": h.delivered,
                "dropped_expired": h.dropped_expired,
                "dropped_refused": h.dropped_refused,
                "rejected_full": h.rejected_full,
            },
            "anti_entropy": {
                "enabled": self._cfg.anti_entropy_interval is not None,
                "rounds": self.ae_rounds,
                "partitions_compared": self.ae_partitions_compared,
                "partitions_repaired": self.ae_partitions_repaired,
                "records_received": self.ae_records_received,
            },
            "membership": {
                "suspected": sorted(membership.suspected),
                "down": sorted(membership.down),
                "left": sorted(membership.left),
                "probes_failed": self.probes_failed,
            },
            "leave": {
                "state": self.leave_state,
                "acknowledged": list(report.acknowledged) if report else [],
                "failed": dict(report.failed) if report else {},
                "not_handed_off": dict(report.not_handed_off) if report else {},
            },
        }


def _idle(task: asyncio.Task[None] | None) -> bool:
    return task is None or task.done()
