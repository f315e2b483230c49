"""What the parts of data movement share: the node's handles, tasks, wake-ups and requests.

One :class:`SyncContext` per node. The parts (failure detector, puller, handoff, hinted
handoff, anti-entropy, leave) each take it; none of them holds a reference to another
except through the callbacks set on the context by the facade
(:class:`~peer_ring.core._sync._manager.SyncManager`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Coroutine, Sequence
from typing import Any, cast

from peer_ring.core._clock import Clock
from peer_ring.core._config import PeerRingConfig
from peer_ring.core._errors import (
    PeerRingError,
    PeerUnavailableError,
    RequestTimeoutError,
    UnknownCommandError,
)
from peer_ring.core._hooks import DataHooks, VersionedDataHooks
from peer_ring.core._membership import Membership
from peer_ring.core._status import error_for_status
from peer_ring.core._sync._delta import (
    MAX_ROUNDS,
    REQUEST_BUDGET,
    RESPONSE_BUDGET,
    entry_size,
    halves,
)
from peer_ring.core._sync._digests import (
    NamespaceDigests,
    RemotePartition,
    buckets_to_pull,
)
from peer_ring.core._sync._hints import HintStore
from peer_ring.core._sync._partitions import PartitionTable
from peer_ring.core._sync._roots import (
    DECODE_SLICE,
    ROOTS_SLICE,
    TURNS_BETWEEN_SLICES,
    RootCache,
    give_turns,
)
from peer_ring.core._sync._wire import (
    DELTA_MORE,
    DELTA_UNSUPPORTED,
    INTERNAL,
    DeltaRequest,
    decode_delta_response,
    encode_delta_request,
    encode_digest_request,
    iter_digest_response,
)
from peer_ring.core._types import Request, Status
from peer_ring.core.transport._base import Transport

logger = logging.getLogger(__name__)

#: Digests fetched at the start of a pull round are reused for this long; a transfer that
#: waited longer for its slot asks for fresh ones (see ``Puller.round``).
DIGESTS_FRESH_FOR = 0.2

#: Seconds before asking a peer that could not serve a delta transfer for one again.
DELTA_RETRY_AFTER = 300.0

#: Partitions per ``handoff`` request: the receiver pulls them while the sender waits.
HANDOFF_BATCH = 128

#: Streams the records of one partition (bucket-restricted) from a peer.
TransferFn = Callable[[str, str, int, Collection[int]], AsyncIterator[list[bytes]]]
#: Runs a write on this node as if a coordinator had sent it (hint redirection).
LocalWriteFn = Callable[[str, str, bytes, bytes], Awaitable[None]]


def _nothing(peer: str) -> None:
    return None


class SyncContext:
    """Handles and plumbing shared by the parts of one node's data movement.

    Args:
        address: this node's address.
        config: the node's configuration.
        clock: the node's clock.
        membership: the node's membership view.
        transport: the node's transport.
        hooks: the node's data hooks by namespace (the live dict).
        transfer: the node's bulk pull of a partition from a peer.
        rng: randomness for jitter and incarnations.
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
        rng: random.Random,
    ) -> None:
        self.me = address
        self.cfg = config
        self.clock = clock
        self.membership = membership
        self.transport = transport
        self.hooks = hooks
        self.transfer = transfer
        self.rng = rng
        self.n = config.replication
        self.incarnation = rng.getrandbits(63) or 1
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
        #: Set while this node announces a graceful leave (probes and pings carry it).
        self.leaving = False
        #: True between ``start`` and ``stop`` of the manager (its loops run).
        self.running = False
        self.stopped = False
        self.tasks: set[asyncio.Task[Any]] = set()
        #: "Something may be due": wakes the work loop.
        self.wake = asyncio.Event()
        self._progress: asyncio.Future[None] | None = None
        #: Round-trip outcomes, wired to the failure detector by the facade.
        self.peer_ok: Callable[[str], None] = _nothing
        self.peer_failed: Callable[[str], None] = _nothing
        self.records_received = 0
        self.bytes_received = 0
        #: Received records that the application reported as changing its storage.
        self.records_applied = 0
        #: Bytes of version lists sent in delta requests (what a delta costs besides data).
        self.versions_bytes_sent = 0
        self.delta_requests = 0
        self.buckets_transferred_whole = 0
        #: (peer, namespace) -> when the peer could not serve a delta transfer.
        self._delta_refused: dict[tuple[str, str], float] = {}
        #: This node's partition roots, reused while the digests are unchanged.
        self.roots = RootCache()

    # -- tasks and waiting -----------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run ``coro`` in a task owned by the manager (cancelled by ``stop``)."""
        task = asyncio.create_task(coro, name=f"{name}-{self.me}")
        self.tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self.tasks.discard(t)
            self.wake.set()
            if not t.cancelled() and (exc := t.exception()) is not None:
                logger.error("%s failed on %s", name, self.me, exc_info=exc)

        task.add_done_callback(done)
        return task

    async def sleep_or(self, event: asyncio.Event | asyncio.Future[None], delay: float) -> None:
        """Sleep ``delay`` seconds of the node's clock, or less if ``event`` is set."""
        if event.is_set() if isinstance(event, asyncio.Event) else event.done():
            return
        sleeper = asyncio.ensure_future(self.clock.sleep(max(delay, 0.0)))
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

    def progress_made(self) -> None:
        """Wake everyone waiting for pulls to progress (a round ended, the ring changed)."""
        fut, self._progress = self._progress, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def wait_progress(self, timeout: float) -> None:
        """Wait until :meth:`progress_made` or ``timeout`` seconds of the node's clock."""
        if self._progress is None:
            self._progress = asyncio.get_running_loop().create_future()
        await self.sleep_or(self._progress, timeout)

    # -- local data --------------------------------------------------------------------------

    def local_digests(self, partition: int) -> dict[str, Sequence[bytes]]:
        """This node's bucket digests of ``partition``, by namespace."""
        return {ns: hooks.digest_partition(partition) for ns, hooks in self.hooks.items()}

    def local_root(self, partition: int) -> int:
        """This node's root of ``partition`` (see :class:`RootCache`)."""
        return self.roots.root(partition, self.local_digests(partition))

    def slice_turns(self) -> int:
        """Loop turns given between two slices of sync work (see :mod:`._roots`):
        :data:`~peer_ring.core._sync._roots.TURNS_BETWEEN_SLICES` once this node is ready,
        one while it makes its initial pull (its readiness comes first: until then it
        refuses the requests of the partitions it pulls anyway)."""
        return TURNS_BETWEEN_SLICES if self.table.ready else 1

    async def between_slices(self) -> None:
        """Give the loop :meth:`slice_turns` turns (after a slice of sync work)."""
        await give_turns(self.slice_turns())

    async def local_roots(self, partitions: Sequence[int]) -> dict[int, int]:
        """This node's roots of ``partitions``, giving the event loop a few turns after
        every :data:`~peer_ring.core._sync._roots.ROOTS_SLICE` partitions (see
        :mod:`._roots`)."""
        roots: dict[int, int] = {}
        local_root = self.local_root
        for start in range(0, len(partitions), ROOTS_SLICE):
            if start:
                await self.between_slices()
            for p in partitions[start : start + ROOTS_SLICE]:
                roots[p] = local_root(p)
        return roots

    def drop(self, partition: int) -> None:
        """Drop ``partition`` from every namespace."""
        self.roots.forget(partition)
        for hooks in self.hooks.values():
            hooks.drop_partition(partition)

    def note_write(self, partition: int) -> None:
        """A write of ``partition`` is stored here (hold it if nobody expects it here)."""
        table = self.table
        if partition in table.replicated or partition in table.held:
            return
        if table.note_stray(partition, self.clock.monotonic()):
            self.wake.set()

    # -- requests to peers -------------------------------------------------------------------

    async def ask(self, peer: str, command: str, payload: bytes, timeout: float) -> bytes:
        """Send an internal command to ``peer``; its outcome feeds the failure detector.

        Raises:
            PeerRingError: the peer is unreachable, timed out or refused the command.
        """
        fut = self.transport.request(peer, Request(INTERNAL, command, b"", payload, 0, "", timeout))
        try:
            response = await fut
        except (PeerUnavailableError, RequestTimeoutError):
            self.peer_failed(peer)
            raise
        self.peer_ok(peer)
        if response.status != Status.OK:
            raise error_for_status(Status(response.status), response.error, peer)
        return response.payload

    async def fetch_digests(
        self, peer: str, partitions: list[int], roots_of: dict[int, int] | None = None
    ) -> dict[int, RemotePartition]:
        """Ask ``peer`` for its digests of ``partitions`` (only those whose root differs
        from ours come back with bucket digests)."""
        if roots_of is None:
            roots_of = await self.local_roots(partitions)
        roots = [(p, roots_of[p]) for p in partitions]
        data = await self.ask(
            peer, "digests", encode_digest_request(roots), self.cfg.request_timeout
        )
        # Decoded a slice at a time: a pull round's answer holds up to sync_batch entries.
        out: dict[int, RemotePartition] = {}
        for i, entry in enumerate(iter_digest_response(data)):
            if i and not i % DECODE_SLICE:
                await self.between_slices()
            out[entry.partition] = entry
        return out

    async def merge_from(self, peer: str, partition: int, remote: NamespaceDigests) -> int | None:
        """Pull what differs in ``partition`` from ``peer``'s digests.

        Only the buckets that differ are considered; within them, a namespace with
        :class:`~peer_ring.core.VersionedDataHooks` receives only the records that are
        missing or older here (a delta transfer), other namespaces (or a peer that cannot
        filter) every record of those buckets.

        Returns the number of records received, or None when the transfer failed.
        """
        received = 0
        for namespace, hooks in sorted(self.hooks.items()):
            theirs = remote.get(namespace)
            if theirs is None:
                continue
            buckets = buckets_to_pull(hooks.digest_partition(partition), theirs)
            if not buckets:
                continue
            try:
                if isinstance(hooks, VersionedDataHooks) and self._delta_allowed(peer, namespace):
                    received += await self._pull_delta(peer, namespace, hooks, partition, buckets)
                else:
                    received += await self._pull_buckets(peer, namespace, hooks, partition, buckets)
            except (PeerRingError, ValueError) as exc:
                logger.info(
                    "pulling partition %d of %s from %s failed: %s", partition, namespace, peer, exc
                )
                return None
        return received

    def _apply(self, hooks: DataHooks, partition: int, records: list[bytes]) -> None:
        self.note_write(partition)
        applied = hooks.apply_records(partition, records)
        self.records_received += len(records)
        self.bytes_received += sum(len(r) for r in records)
        if isinstance(applied, int):
            self.records_applied += applied

    async def _pull_buckets(
        self,
        peer: str,
        namespace: str,
        hooks: DataHooks,
        partition: int,
        buckets: list[int],
        fallback: bool = True,
    ) -> int:
        """Transfer every record of ``buckets`` (the ``Transfer`` stream); ``fallback``:
        counted in ``buckets_transferred_whole`` (a delta was not possible)."""
        received = 0
        async for chunk in self.transfer(peer, namespace, partition, buckets):
            self._apply(hooks, partition, chunk)
            received += len(chunk)
        if fallback:
            self.buckets_transferred_whole += len(buckets)
        return received

    def _delta_allowed(self, peer: str, namespace: str) -> bool:
        refused = self._delta_refused.get((peer, namespace))
        return refused is None or self.clock.monotonic() - refused > DELTA_RETRY_AFTER

    async def _pull_delta(
        self,
        peer: str,
        namespace: str,
        hooks: DataHooks,
        partition: int,
        buckets: list[int],
    ) -> int:
        """Receive the records of ``buckets`` that are missing or older here: send our
        version list, apply the answer, ask again while the source has more."""
        limit = self.cfg.transport_limits.max_message_bytes
        request_budget = min(REQUEST_BUDGET, limit // 4)
        response_budget = min(RESPONSE_BUDGET, limit // 2)
        versions = cast(VersionedDataHooks, hooks)
        received = 0
        # (buckets, answers that said "more" for this single bucket so far)
        groups: list[tuple[list[int], int]] = [(buckets, 0)]
        while groups:
            group, rounds = groups.pop()
            entries = list(versions.record_versions(partition, group))
            if not entries:
                # We hold nothing there: every record is missing, which is exactly what the
                # Transfer stream sends, in chunks, on a stream of its own (an initial sync
                # does not queue megabytes of answers behind the peers' requests).
                received += await self._pull_buckets(
                    peer, namespace, hooks, partition, group, fallback=False
                )
                continue
            if sum(entry_size(v) for _, v in entries) > request_budget:
                if len(group) > 1:
                    # Too many records here to list in one request: halve the buckets.
                    groups.extend((half, 0) for half in halves(group))
                else:
                    received += await self._pull_buckets(peer, namespace, hooks, partition, group)
                continue
            request = DeltaRequest(namespace, partition, response_budget, tuple(group), entries)
            payload = encode_delta_request(request)
            self.versions_bytes_sent += len(payload)
            try:
                data = await self.ask(peer, "delta", payload, self.cfg.transfer_timeout)
            except UnknownCommandError:
                # An older node: it does not know "delta". Whole buckets, and do not ask it
                # again for a while (it may be upgraded in a rolling restart).
                self._delta_refused[(peer, namespace)] = self.clock.monotonic()
                received += await self._pull_buckets(peer, namespace, hooks, partition, group)
                continue
            flags, records = decode_delta_response(data)
            if flags & DELTA_UNSUPPORTED:
                self._delta_refused[(peer, namespace)] = self.clock.monotonic()
                received += await self._pull_buckets(peer, namespace, hooks, partition, group)
                continue
            if records:
                self._apply(hooks, partition, records)
                received += len(records)
            self.delta_requests += 1
            if not flags & DELTA_MORE:
                continue
            if len(group) > 1:
                # More than one answer's worth: ask for each half, so that the version lists
                # sent again (which now include what was just received) stay small.
                groups.extend((half, 0) for half in halves(group))
            elif rounds + 1 >= MAX_ROUNDS:
                # Only an application that keeps sending records its peer's merge does not
                # keep gets here: a failed pull (retried, then given up) is honest, a
                # partition judged complete without its records would not be.
                more = rounds + 1
                raise ValueError(f"bucket {group[0]}: still more records after {more} answers")
            else:
                groups.append((group, rounds + 1))
        return received
