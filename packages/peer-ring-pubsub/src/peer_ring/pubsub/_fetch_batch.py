"""One long-poll per sequencer peer for all of a subscription's partitions it sequences.

A subscription runs one fetch loop per partition, but the FETCH requests of the loops whose
partitions the same remote peer sequences leave together: the requests made in one turn of
the event loop become one FETCH_MANY, which the peer answers as soon as any of its sections
has messages (or at the poll's end, all empty). The loops woken by one reply ask again in
the same turn, so under load a peer's partitions keep travelling in one request, and the
group deltas of their claims in one replication on the sequencer. A section that failed
with a retryable error (the partition changed hands...) and a request that failed as a
whole go through the partition's own retrying FETCH path, as before this batching.

When this node holds a replica of a section's partition, the section asks the sequencer to
send the delivery records of messages it claims after their commit in the reply
(``records_here``): this node merges them under the epoch fence before it hands anything
out, so with W = 2 the sequencer's copy and this one are the W copies and the reply does
not wait for a replication round trip first. A section whose merge is refused (a newer
epoch was promised here) delivers nothing and takes the partition's own path.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import replace

from peer_ring.pubsub._client import RETRYABLE, SequencerClient
from peer_ring.pubsub._errors import PartitionUnavailableError, PubSubError
from peer_ring.pubsub._service import Service
from peer_ring.pubsub._store import RefusedError
from peer_ring.pubsub._wire import (
    FETCH,
    FETCH_MANY,
    NAMESPACE,
    FetchReply,
    FetchRequest,
    GroupRequest,
    decode_section_replies,
    encode_fetch_many,
    open_reply,
)

logger = logging.getLogger(__name__)

_Item = tuple[bytes, FetchRequest, asyncio.Future[FetchReply]]


class FetchBatcher:
    """Joins the FETCH requests of one subscription per sequencer peer.

    ``track`` receives each request task (the subscription cancels them on close, so no
    claim is made for it once it is gone).
    """

    def __init__(
        self, client: SequencerClient, track: Callable[[asyncio.Task[None]], None]
    ) -> None:
        self.client = client
        self._track = track
        self._queued: dict[str, list[_Item]] = {}  # per peer, this turn's sections
        self.requests = 0  # FETCH_MANY requests sent (for tests and tuning)

    async def fetch(self, key: bytes, req: FetchRequest) -> FetchReply:
        """Run ``req`` on the sequencer of ``key``; raises its typed error."""
        client = self.client
        head = client.head(key)
        if head is not None and head != client.node.address:
            fut: asyncio.Future[FetchReply] = asyncio.get_running_loop().create_future()
            queued = self._queued.get(head)
            if queued is None:
                queued = self._queued[head] = []
                asyncio.get_running_loop().call_soon(self._flush, head)
            queued.append((key, req, fut))
            try:
                return await fut
            except RETRYABLE as exc:  # this partition's own path retries until its timeout
                logger.debug("pubsub: fetch_many section %r: %s; retrying alone", key, exc)
        return await client.run(
            key,
            FETCH,
            req.encode,
            functools.partial(Service.fetch_by, key, req),
            FetchReply.from_reader,
            wait=req.wait,
        )

    def _flush(self, head: str) -> None:
        items = [item for item in self._queued.pop(head, []) if not item[2].done()]
        if items:  # (a section whose fetch was cancelled meanwhile is left out)
            self._track(asyncio.ensure_future(self._send(head, items)))

    def _records_here(self, key: bytes, req: FetchRequest) -> FetchRequest:
        """``req`` asking for its delivery records in the reply when this node holds a
        ready replica of ``key``'s partition (see the module's doc)."""
        node = self.client.node
        if (
            not req.group
            or self.client.service is None
            or not req.config.durable
            or node.address not in node.preference_list(key, self.client.replication)
            or not node.partition_ready(node.partition_for_key(key))
        ):
            return req
        return replace(req, records_here=True)

    def _merge_records(
        self, key: bytes, req: FetchRequest, outcome: FetchReply | BaseException
    ) -> FetchReply | BaseException:
        """Merge the delivery records a reply carries into this node's replica before its
        messages are handed out; a refused merge fails the section (retryably)."""
        if isinstance(outcome, BaseException) or outcome.records is None:
            return outcome
        service = self.client.service
        if service is None or not req.records_here:  # never asked for: not safe to deliver
            return PartitionUnavailableError("fetch reply carried records nobody asked for")
        epoch, delta = outcome.records
        try:
            service.store.apply_group(key, GroupRequest(req.config, epoch, req.group, delta))
        except RefusedError as exc:
            return PartitionUnavailableError(f"delivery records refused here: {exc}")
        except Exception as exc:  # not merged: nothing of this section is handed out
            logger.warning("pubsub: delivery records of %r not merged: %r", key, exc)
            return PartitionUnavailableError(f"delivery records not merged here: {exc}")
        outcome.records = None
        return outcome

    async def _send(self, head: str, items: list[_Item]) -> None:
        outcomes: list[FetchReply | BaseException]
        items = [(key, self._records_here(key, req), fut) for key, req, fut in items]
        try:
            if len(items) == 1:  # one partition: the plain FETCH, no sections
                key, req, _ = items[0]
                raw = await self.client.node.call(
                    head, NAMESPACE, FETCH, key, req.encode(), timeout=req.wait + 2.0
                )
                try:
                    outcomes = [FetchReply.from_reader(open_reply(raw))]
                except PubSubError as exc:  # the sequencer's typed answer, as is
                    outcomes = [exc]
            else:
                self.requests += 1
                wait = max(req.wait for _, req, _ in items)
                payload = encode_fetch_many([(key, req) for key, req, _ in items])
                raw = await self.client.node.call(
                    head, NAMESPACE, FETCH_MANY, items[0][0], payload, timeout=wait + 2.0
                )
                outcomes = []
                for part in decode_section_replies(open_reply(raw), len(items)):
                    outcomes.append(
                        part if isinstance(part, BaseException) else FetchReply.from_reader(part)
                    )
        except asyncio.CancelledError:
            for _, _, fut in items:
                fut.cancel()
            raise
        except Exception as exc:  # the whole request failed: each takes its own path
            outcomes = [_as_retryable(exc)] * len(items)
        for (key, req, fut), outcome in zip(items, outcomes, strict=True):
            outcome = self._merge_records(key, req, outcome)
            if fut.done():
                continue
            if isinstance(outcome, BaseException):
                fut.set_exception(outcome)
            else:
                fut.set_result(outcome)


def _as_retryable(exc: Exception) -> Exception:
    """Any failure of a whole request sends its sections down their own retrying path."""
    if isinstance(exc, RETRYABLE):
        return exc
    return PartitionUnavailableError(f"fetch_many failed: {type(exc).__name__}: {exc}")
