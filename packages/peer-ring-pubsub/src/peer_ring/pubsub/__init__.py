"""peer-ring pub-sub: partitioned, replicated topics and work queues.

Each topic partition is a log with one sequencer at a time (one of the partition's
replicas, balanced over the nodes: ``sequencers``) that assigns ``(epoch, sequence)``
offsets and acknowledges a publish once W replicas hold it. Consumer groups share
messages with acks, redelivery after ``ack_wait`` and a dead-letter topic; their state is
replicated with the log. See the package README.
"""

from peer_ring.pubsub.__about__ import __version__
from peer_ring.pubsub._config import TopicConfig
from peer_ring.pubsub._errors import (
    InvalidOptionError,
    NotHeldError,
    NotSequencerError,
    OffsetOutOfRangeError,
    PartitionUnavailableError,
    PayloadTooLargeError,
    PublishError,
    PubSubError,
    StaleAckError,
    SubscriptionClosedError,
)
from peer_ring.pubsub._message import Message, PublishResult, SubscriptionHealth
from peer_ring.pubsub._placement import sequencers
from peer_ring.pubsub._pubsub import PubSub, Topic
from peer_ring.pubsub._subscription import Subscription

__all__ = [
    "InvalidOptionError",
    "Message",
    "NotHeldError",
    "NotSequencerError",
    "OffsetOutOfRangeError",
    "PartitionUnavailableError",
    "PayloadTooLargeError",
    "PubSub",
    "PubSubError",
    "PublishError",
    "PublishResult",
    "StaleAckError",
    "Subscription",
    "SubscriptionClosedError",
    "SubscriptionHealth",
    "Topic",
    "TopicConfig",
    "__version__",
    "sequencers",
]
