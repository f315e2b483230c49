"""The values the public API hands out: messages, publish results, subscription health."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

#: ``settle(message, op, wait)``: how a message reaches its subscription to be settled.
Settle = Callable[["Message", int, float], Awaitable[None]]
#: ``ack_nowait(message)``: queue an ack without waiting for it.
AckNowait = Callable[["Message"], None]


@dataclass(frozen=True, slots=True)
class PublishResult:
    """Where a published message was stored.

    Attributes:
        topic: the topic.
        partition: the topic partition.
        offset: the message's sequence number in the partition (what ``read(start=...)``
            takes).
        epoch: the epoch of the sequencer that assigned it (with ``offset``, its identity).
        duplicate: True when the ``msg_id`` was already stored (nothing new was written;
            ``offset`` is the first copy's).
    """

    topic: str
    partition: int
    offset: int
    epoch: int
    duplicate: bool


@dataclass(eq=False, slots=True)
class Message:
    """A delivered message.

    Attributes:
        topic: the topic.
        partition: the topic partition.
        offset: its sequence number in the partition.
        epoch: the epoch of the sequencer that assigned the offset.
        data: the payload.
        key: the publisher's ordering key (b"" when none).
        msg_id: the publisher's idempotency id ("" when none).
        timestamp: the sequencer's wall-clock time at append (information only).
        deliveries: 1 on the first delivery to a group, more on redeliveries; 0 for
            messages read without a group (broadcast, replay).
    """

    topic: str
    partition: int
    offset: int
    epoch: int
    data: bytes
    key: bytes
    msg_id: str
    timestamp: float
    deliveries: int
    _settle: Settle | None = field(default=None, repr=False)
    settled: bool = field(default=False, repr=False)
    _ack_nowait: AckNowait | None = field(default=None, repr=False)

    async def ack(self) -> None:
        """Mark the message done for its group (durable on W replicas when this returns).

        Raises:
            StaleAckError: the message was redelivered since (its ``ack_wait`` expired).
            NotHeldError: this consumer does not hold it.
        """
        if self._settle is not None:
            await self._settle(self, 0, 0.0)

    def ack_nowait(self) -> None:
        """Ack without waiting (JetStream's fire-and-forget ``ack``): the ack joins the
        partition's next ack batch and this returns at once.

        Nothing is reported to the caller: a failed ack is counted in the subscription's
        ``health()`` (``errors``, ``last_error``) and the message is redelivered after its
        ``ack_wait``, as if it had not been acked. Use ``await ack()`` to know the ack is
        durable.

        Raises:
            SubscriptionClosedError: the subscription is closed.
        """
        if self._ack_nowait is not None:
            self._ack_nowait(self)

    async def nak(self, delay: float = 0.0) -> None:
        """Give the message back: redeliver it after ``delay`` seconds (to any member)."""
        if self._settle is not None:
            await self._settle(self, 1, float(delay))

    async def in_progress(self) -> None:
        """Still working on it: restart its ``ack_wait``."""
        if self._settle is not None:
            await self._settle(self, 2, -1.0)

    async def term(self) -> None:
        """Never redeliver this message (it is done without being processed)."""
        if self._settle is not None:
            await self._settle(self, 3, 0.0)


@dataclass(frozen=True, slots=True)
class SubscriptionHealth:
    """A subscription's state, for health checks and metrics.

    Attributes:
        topic: the topic.
        group: the consumer group (None for broadcast).
        consumer: this subscriber's id.
        in_flight: messages delivered to the application and not settled (or queued).
        max_in_flight: the bound on ``in_flight`` (backpressure).
        delivered: messages delivered so far.
        acked: messages acked (or terminated).
        redelivered: deliveries with ``deliveries > 1``.
        expired: messages the group lost to retention before reading them.
        errors: fetch or settle errors so far.
        last_error: the last one, as text.
        stalled: True when ``in_flight`` is at its bound and nothing was settled for
            longer than ``ack_wait``: the application stopped consuming.
    """

    topic: str
    group: str | None
    consumer: str
    in_flight: int
    max_in_flight: int
    delivered: int
    acked: int
    redelivered: int
    expired: int
    errors: int
    last_error: str
    stalled: bool
