"""Bad configuration and bad arguments: each is refused with a clear typed error, at once.

Every check of :class:`PeerRingConfig` and of the node's registration / call surface is
driven here with one bad value at a time (the rest valid), and the message must name the
setting, so an operator can fix it without reading the code.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from peer_ring.core import (
    Command,
    InvalidArgumentError,
    PeerRing,
    PeerRingConfig,
    QuorumNotReachedError,
    TLSConfig,
)
from peer_ring.core.testing import FakeClock, FixedDiscovery, MemoryNetwork

# -- PeerRingConfig ------------------------------------------------------------------------

POSITIVE = [
    "request_timeout",
    "suspicion_timeout",
    "transfer_timeout",
    "probe_interval",
    "probe_timeout",
    "max_clock_offset",
    "sync_retry_initial",
    "sync_retry_max",
    "handoff_timeout",
    "hint_ttl",
    "leave_deadline",
    "down_after",
    "anti_entropy_interval",
]
AT_LEAST_ONE = [
    "sync_concurrency",
    "sync_batch",
    "hint_max",
    "hint_max_bytes",
    "hint_batch",
    "anti_entropy_batch",
]
NOT_NEGATIVE = ["sync_give_up_after", "handoff_delay", "handoff_retention"]


@pytest.mark.parametrize("name", POSITIVE)
@pytest.mark.parametrize("value", [0, -1.5, math.nan])
def test_durations_must_be_positive(name: str, value: float) -> None:
    with pytest.raises(InvalidArgumentError, match=rf"^{name} must be > 0, got"):
        PeerRingConfig(**{name: value})


@pytest.mark.parametrize("name", AT_LEAST_ONE)
@pytest.mark.parametrize("value", [0, -3, 2.5, "4"])
def test_counts_must_be_integers_of_at_least_one(name: str, value: Any) -> None:
    with pytest.raises(InvalidArgumentError, match=rf"^{name} must be an integer >= 1"):
        PeerRingConfig(**{name: value})


@pytest.mark.parametrize("name", NOT_NEGATIVE)
def test_delays_may_be_zero_but_not_negative(name: str) -> None:
    assert getattr(PeerRingConfig(**{name: 0}), name) == 0
    for bad in (-0.001, math.nan):
        with pytest.raises(InvalidArgumentError, match=rf"^{name} must be >= 0"):
            PeerRingConfig(**{name: bad})


def test_optional_intervals_may_be_disabled() -> None:
    # None switches the feature off; it must not be mistaken for a bad number.
    config = PeerRingConfig(down_after=None, anti_entropy_interval=None)
    assert config.down_after is None and config.anti_entropy_interval is None


@pytest.mark.parametrize("transport", ["udp", "GRPC", ""])
def test_unknown_transport_is_refused(transport: str) -> None:
    with pytest.raises(InvalidArgumentError, match="transport must be 'grpc' or 'tcp'"):
        PeerRingConfig(transport=transport)


@pytest.mark.parametrize("partitions", [0, -1])
def test_partitions_must_be_at_least_one(partitions: int) -> None:
    with pytest.raises(InvalidArgumentError, match="partitions must be >= 1"):
        PeerRingConfig(partitions=partitions)
    assert PeerRingConfig(partitions=1).partitions == 1


@pytest.mark.parametrize(
    ("replication", "quorum", "message"),
    [
        (0, None, "replication must be an integer >= 1"),
        (2.0, None, "replication must be an integer >= 1"),
        (3, 0, "quorum must be an integer >= 1"),
        (3, 1.5, "quorum must be an integer >= 1"),
        (3, 4, r"quorum \(4\) cannot be greater than replication \(3\)"),
    ],
)
def test_impossible_replication_and_quorum(replication: Any, quorum: Any, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        PeerRingConfig(replication=replication, quorum=quorum)


def test_default_quorum_is_a_majority_unless_configured() -> None:
    assert [PeerRingConfig(replication=n).quorum_for(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]
    # A configured quorum applies where it fits, and falls back to a majority where a
    # per-call replication is smaller than it.
    config = PeerRingConfig(replication=5, quorum=4)
    assert config.quorum_for(5) == 4
    assert config.quorum_for(3) == 2


# -- the node's call surface ---------------------------------------------------------------


@pytest.fixture
async def node() -> PeerRing:
    clock = FakeClock()
    net = MemoryNetwork(clock)
    peers = ["n1:1"]
    node = PeerRing(
        FixedDiscovery(peers[0], peers),
        config=PeerRingConfig(partitions=8, replication=1, anti_entropy_interval=None),
        transport=net.transport(peers[0]),
        clock=clock,
    )
    return node


def handler(ctx: Any, key: bytes, payload: bytes) -> bytes:
    return payload


def test_a_transport_on_another_address_is_refused() -> None:
    net = MemoryNetwork(FakeClock())
    with pytest.raises(InvalidArgumentError, match="transport address b:1 differs"):
        PeerRing(FixedDiscovery("a:1", ["a:1"]), transport=net.transport("b:1"))


@pytest.mark.parametrize("namespace", ["", 7, None])
def test_register_needs_a_namespace(node: PeerRing, namespace: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="namespace must be a non-empty string"):
        node.register(namespace, "get", handler)


def test_register_needs_a_callable_and_a_command(node: PeerRing) -> None:
    with pytest.raises(InvalidArgumentError, match="handler of app/get is not callable"):
        node.register("app", "get", b"not a function")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="a command is a Command or a name, not int"):
        node.register("app", 42, handler)  # type: ignore[arg-type]
    # Nothing half-registered: the name is still free.
    node.register("app", "get", handler)


def test_hooks_register_once_per_namespace(node: PeerRing) -> None:
    hooks: Any = object()
    assert node.hooks("app") is None
    node.register_hooks("app", hooks)
    assert node.hooks("app") is hooks
    with pytest.raises(InvalidArgumentError, match="hooks for 'app' are already registered"):
        node.register_hooks("app", object())  # type: ignore[arg-type]
    assert node.hooks("app") is hooks


async def test_execute_refuses_bad_keys_and_commands_and_serves_on(node: PeerRing) -> None:
    node.register("app", "echo", handler)
    async with node:
        with pytest.raises(InvalidArgumentError, match="keys are str or bytes, not int"):
            await node.execute("app", "echo", 5, b"x")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match="a command is a Command or a name, not"):
            await node.execute("app", 3.0, b"k", b"x")  # type: ignore[arg-type]
        # A Command this node never registered is coordinated as the caller declared it;
        # the replica (this node) then answers that it does not know it.
        with pytest.raises(QuorumNotReachedError, match="unknown command app/nope on n1:1"):
            await node.execute("app", Command("nope", reads=True), b"k", b"x")
        result = await node.execute("app", "echo", "k", b"still here")
        assert result.payloads == [b"still here"]
        assert node.is_replica("k") and node.running
    assert not node.running


# -- TLSConfig -------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["ca_file", "cert_file", "key_file"])
@pytest.mark.parametrize("value", ["", None, 42])
def test_tls_files_must_be_paths(field: str, value: Any) -> None:
    files = {"ca_file": "ca.pem", "cert_file": "node.pem", "key_file": "node.key"}
    with pytest.raises(InvalidArgumentError, match=f"TLSConfig.{field} must be a file path"):
        TLSConfig(**{**files, field: value})


def test_tls_config_stores_paths_as_text_and_checks_the_rest() -> None:
    config = TLSConfig(Path("ca.pem"), Path("node.pem"), Path("node.key"))  # type: ignore[arg-type]
    assert (config.ca_file, config.cert_file, config.key_file) == ("ca.pem", "node.pem", "node.key")
    with pytest.raises(InvalidArgumentError, match="reload_interval must be >= 0"):
        TLSConfig("ca.pem", "node.pem", "node.key", reload_interval=-1)
    with pytest.raises(InvalidArgumentError, match="server_name must not be empty"):
        TLSConfig("ca.pem", "node.pem", "node.key", server_name="  ")
    assert TLSConfig("ca.pem", "node.pem", "node.key", server_name="peer-ring").server_name
