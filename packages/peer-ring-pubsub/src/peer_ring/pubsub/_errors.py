"""Typed errors of the pub-sub package.

Errors raised by a partition's sequencer travel back to the caller as an error code and a
message in the reply (see :func:`error_from_code`), so a remote node raises the same type as
a local one. Every error derives from :class:`PubSubError`, itself a
``peer_ring.core.PeerRingError``.
"""

from __future__ import annotations

from peer_ring.core import InvalidArgumentError, PeerRingError


class PubSubError(PeerRingError):
    """Base class of every pub-sub error."""

    code = "pubsub"


class InvalidOptionError(PubSubError, InvalidArgumentError):
    """An unknown or invalid topic / subscription option, or a topic redeclared differently."""

    code = "invalid_option"


class PayloadTooLargeError(PubSubError, InvalidArgumentError):
    """A message is larger than the topic's ``max_message_bytes``."""

    code = "payload_too_large"


class OffsetOutOfRangeError(PubSubError):
    """A read started below the partition's retention (or above its end).

    Attributes:
        partition: the topic partition.
        requested: the requested sequence number.
        first: the first sequence still retained.
    """

    code = "offset_out_of_range"

    def __init__(self, message: str, partition: int = -1, requested: int = -1, first: int = -1):
        super().__init__(message)
        self.partition = partition
        self.requested = requested
        self.first = first


class NotHeldError(PubSubError):
    """An ack / nak / in_progress / term for a message this consumer does not hold."""

    code = "not_held"


class StaleAckError(NotHeldError):
    """An ack for a delivery that was since redelivered (its ``ack_wait`` expired)."""

    code = "stale_ack"


class PublishError(PubSubError):
    """A publish was not acknowledged by enough replicas; it may or may not be stored.

    Retry with the same ``msg_id``: the dedup window stores it at most once.
    """

    code = "publish_failed"


class PartitionUnavailableError(PubSubError):
    """The partition has no working sequencer right now (election or quorum failed)."""

    code = "unavailable"


class NotSequencerError(PartitionUnavailableError):
    """The node asked is not the partition's sequencer (the caller retries elsewhere)."""

    code = "not_sequencer"


class SubscriptionClosedError(PubSubError):
    """The subscription (or the whole PubSub) was closed."""

    code = "closed"


_BY_CODE: dict[str, type[PubSubError]] = {
    cls.code: cls
    for cls in (
        PubSubError,
        InvalidOptionError,
        PayloadTooLargeError,
        OffsetOutOfRangeError,
        NotHeldError,
        StaleAckError,
        PublishError,
        PartitionUnavailableError,
        NotSequencerError,
        SubscriptionClosedError,
    )
}


def error_from_code(code: str, message: str) -> PubSubError:
    """Rebuild the error a remote sequencer reported (unknown codes give PubSubError)."""
    return _BY_CODE.get(code, PubSubError)(message)
