"""Hypothesis-generated bad input on the gRPC service of a real node in another process.

The node (``NODE_SCRIPT``) is a ``PeerRing`` with a few handlers (inline, asynchronous,
failing) and data-movement hooks, so that fuzzed requests reach the real dispatch: user
commands, the core's internal commands (``ping``, ``digests``, ``delta``, ``handoff``,
``leaving``) with random payloads, hinted writes, and bulk transfers.

Every case opens a raw ``Exchange`` stream (or ``Transfer`` call) and sends what Hypothesis
generated: random bytes, truncated / mutated valid frames, fields with the wrong wire type,
over-long varints, unknown fields, extreme ids, partitions and ``timeout_ms``, empty, huge and
invalid-UTF-8 strings. The case then checks the node's *answer*: a frame that does not parse
ends the stream with INVALID_ARGUMENT and a message; a frame that parses gets one response
per request id (each with a valid status, and a message when it is not OK). The last test
checks that the process is alive, that its memory grew by less than a generous bound over
the run (RSS from ``/proc``), and that it serves a normal request correctly.

Scale with ``PEER_RING_FUZZ_SCALE`` (default 1: about 2,600 cases in ~30 s on 2 cores).
Safety: the node only ever dials 127.0.0.1 (the fuzzed sender and hint addresses are fixed
loopback addresses, never generated text that could be a host name).
"""

from __future__ import annotations

import asyncio
import os
import select
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peer_ring.core._types import Request, Status
from peer_ring.core.proto import peer_ring_pb2 as pb
from peer_ring.core.testing import free_port
from peer_ring.core.transport import GrpcTransport, TransportLimits
from peer_ring.core.transport._codec import varint
from peer_ring.core.transport._options import EXCHANGE_PATH, SENDER_KEY, TRANSFER_PATH

pytestmark = pytest.mark.slow

SCALE = max(1, int(os.environ.get("PEER_RING_FUZZ_SCALE", "1")))
MAX_MESSAGE = 4 << 20
#: Case-level bound (seconds): a case that takes longer is a bug (a lost answer).
CASE_LIMIT = 10.0
#: Allowed RSS growth of the node from the warm-up to the end (measured: 1.4 MiB after the
#: survival test alone, 1-2.5 MiB after the whole module; the node is about 40 MiB). A leak
#: of a few hundred bytes per case shows over the 3,000 cases of the module.
RSS_GROWTH_LIMIT = 8 << 20
INTERNAL = "__peer_ring__"

NODE_SCRIPT = r"""
import asyncio, logging, sys
from peer_ring.core import (
    Command, PeerRing, PeerRingConfig, bucket_for_key, partition_for_key,
)
from peer_ring.core.testing import FixedDiscovery
from peer_ring.core.transport import GrpcTransport, TransportLimits

address = sys.argv[1]
PARTITIONS = 16
store = {}

class Hooks:
    def export_partition(self, partition, buckets=None):
        for key, value in list(store.items()):
            if partition_for_key(key, PARTITIONS) != partition:
                continue
            if buckets is None or bucket_for_key(key) in buckets:
                yield key + b"=" + value
    def apply_records(self, partition, records):
        for record in records:
            key, _, value = record.partition(b"=")
            put(key, value)
    def drop_partition(self, partition):
        for key in [k for k in store if partition_for_key(k, PARTITIONS) == partition]:
            del store[key]
    def digest_partition(self, partition):
        return [b""] * 64
    def record_versions(self, partition, buckets):
        return []
    def export_newer(self, partition, buckets, known):
        return self.export_partition(partition, buckets)

def put(key, value):
    if key not in store and len(store) >= 1000:   # the store is bounded: memory is not
        store.pop(next(iter(store)))             # allowed to grow with the data either
    store[key] = value

def h_set(ctx, key, payload):
    put(key, payload)
    return b""

def h_get(ctx, key, payload):
    return store.get(key, b"")

async def h_slow(ctx, key, payload):
    await asyncio.sleep(0.001)
    return payload[:16]

def h_boom(ctx, key, payload):
    raise RuntimeError("boom")

async def main():
    logging.basicConfig(level=logging.WARNING, format="%%(levelname)s %%(name)s: %%(message)s")
    limits = TransportLimits(max_message_bytes=%(max_message)d, max_request_timeout=2.0)
    config = PeerRingConfig(
        partitions=PARTITIONS, replication=1, transport_limits=limits,
        hint_max_bytes=1 << 20, anti_entropy_interval=None, handoff_timeout=2.0,
    )
    node = PeerRing(FixedDiscovery(address, [address]), config=config,
                    transport=GrpcTransport(address, limits=limits))
    node.register("t", Command("set", mutates=True), h_set)
    node.register("t", Command("get", reads=True), h_get)
    node.register("t", "slow", h_slow)
    node.register("t", "boom", h_boom)
    node.register_hooks("t", Hooks())
    await node.start()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await node.stop()

asyncio.run(main())
"""


# -- the node under test --------------------------------------------------------------------------


@dataclass
class NodeProcess:
    """The node's process, address and the loopback addresses the fuzz may name."""

    process: subprocess.Popen[bytes]
    address: str
    sender: str
    log: Path
    counts: Counter[str] = field(default_factory=Counter)

    def rss(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def node(require_component: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    require_component("/proc (Linux)", os.path.exists("/proc/self/status"), "RSS is read there")
    address = f"127.0.0.1:{free_port('127.0.0.1')}"
    # A sender address nobody listens on: when the node dials it back (handoff digests,
    # probes), the connection is refused at once, on loopback.
    sender = f"127.0.0.1:{free_port('127.0.0.1')}"
    script = NODE_SCRIPT % {"max_message": MAX_MESSAGE}
    log = tmp_path_factory.mktemp("fuzz-node") / "node.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", script, address],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 30.0)
        assert ready and process.stdout.readline().strip() == b"ready", "node did not start"
        yield NodeProcess(process, address, sender, log)
    finally:
        if process.stdin is not None:
            process.stdin.close()  # the node stops when its stdin closes
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


@dataclass
class Client:
    """One event loop and one channel shared by every case of the module."""

    runner: asyncio.Runner
    channel: grpc.aio.Channel
    metadata: tuple[tuple[str, str], ...]


@pytest.fixture(scope="module")
def client(node: NodeProcess) -> Iterator[Client]:
    runner = asyncio.Runner()

    async def open_channel() -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(
            node.address,
            options=[
                ("grpc.max_send_message_length", 64 << 20),
                ("grpc.max_receive_message_length", 64 << 20),
            ],
        )

    channel = runner.run(open_channel())
    try:
        yield Client(runner, channel, ((SENDER_KEY, node.sender),))
    finally:
        runner.run(channel.close(None))
        runner.close()


# -- raw protobuf building blocks -----------------------------------------------------------------


def key(number: int, wire_type: int) -> bytes:
    return varint((number << 3) | wire_type)


def length_delimited(number: int, data: bytes) -> bytes:
    return key(number, 2) + varint(len(data)) + data


def varint_field(number: int, value: int) -> bytes:
    return key(number, 0) + varint(value)


U64 = st.one_of(
    st.integers(0, 1000),
    st.sampled_from([0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]),
    st.integers(0, 2**64 - 1),
)
NAMESPACES = st.one_of(
    st.sampled_from([b"t", INTERNAL.encode(), b"", b"kv", b"T", b"t\x00"]),
    st.text(max_size=24).map(str.encode),
    st.binary(max_size=24),  # mostly invalid UTF-8
    st.integers(10_000, 300_000).map(lambda n: b"n" * n),  # huge
)
COMMANDS = st.one_of(
    st.sampled_from(
        [
            *(b"set", b"get", b"slow", b"boom", b"ping", b"digests", b"delta", b"handoff"),
            *(b"leaving", b""),
        ]
    ),
    st.text(max_size=16).map(str.encode),
    st.binary(max_size=16),
)


def hints(sender: str) -> st.SearchStrategy[bytes]:
    # Only loopback addresses or text that is no address: the node may dial a hint target.
    return st.one_of(
        st.sampled_from([b"", sender.encode(), b"127.0.0.1:1", b"\xff\xfe"]),
        st.integers(0, 65535).map(lambda p: b"127.0.0.1:%d" % p),
    )


def over_long_varint() -> st.SearchStrategy[bytes]:
    # 11+ continuation bytes: more than any 64-bit varint may have.
    return st.integers(11, 40).map(lambda n: b"\xff" * n + b"\x01")


def wrong_type(numbers: tuple[int, ...]) -> st.SearchStrategy[bytes]:
    """A known field number with a wire type its schema does not have (or an invalid one)."""
    return st.builds(
        lambda n, wt, body: key(n, wt) + body,
        st.sampled_from(numbers),
        st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7]),
        st.binary(max_size=12),
    )


def unknown_field() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.builds(varint_field, st.integers(9, 2**29 - 1), U64),
        st.builds(length_delimited, st.integers(9, 2**29 - 1), st.binary(max_size=64)),
        st.builds(
            lambda n, b: key(n, 5) + b, st.integers(9, 1000), st.binary(min_size=4, max_size=4)
        ),
    )


def request_fields(sender: str) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.builds(varint_field, st.just(1), U64),
        st.builds(length_delimited, st.just(2), NAMESPACES),
        st.builds(length_delimited, st.just(3), COMMANDS),
        st.builds(length_delimited, st.just(4), st.binary(max_size=64)),
        st.builds(length_delimited, st.just(5), st.binary(max_size=512)),
        st.builds(varint_field, st.just(6), U64),
        st.builds(length_delimited, st.just(7), hints(sender)),
        st.builds(varint_field, st.just(8), U64),
        wrong_type((1, 2, 3, 4, 5, 6, 7, 8)),
        unknown_field(),
        over_long_varint(),
    )


def raw_request(sender: str) -> st.SearchStrategy[bytes]:
    # Fields in any order, repeated or missing: protobuf's last-one-wins applies.
    return st.lists(request_fields(sender), max_size=10).map(b"".join)


def typed_request(sender: str) -> st.SearchStrategy[bytes]:
    """A Request that is valid protobuf, with the values a node should expect (or not)."""
    return st.builds(
        lambda i, ns, cmd, k, p, part, hint, t: pb.Request(
            id=i,
            namespace=ns,
            command=cmd,
            key=k,
            payload=p,
            partition=part,
            hint=hint,
            timeout_ms=t,
        ).SerializeToString(),
        U64,
        st.sampled_from(["t", INTERNAL, "", "x"]),
        st.sampled_from(["set", "get", "slow", "boom", "ping", "digests", "handoff", "leaving"]),
        st.binary(max_size=32),
        st.binary(max_size=64),
        st.integers(0, 2**32 - 1),
        st.sampled_from(["", sender, "127.0.0.1:1"]),
        st.sampled_from([0, 1, 100, 2000, 2**32 - 1]),
    )


def frame_parts(sender: str) -> st.SearchStrategy[bytes]:
    requests = st.one_of(typed_request(sender), raw_request(sender))
    return st.one_of(
        st.builds(length_delimited, st.just(1), requests),
        st.builds(length_delimited, st.just(1), requests),  # requests are the common part
        st.builds(  # packed cancels
            length_delimited,
            st.just(3),
            st.lists(U64, max_size=8).map(lambda ids: b"".join(map(varint, ids))),
        ),
        st.builds(varint_field, st.just(3), U64),  # an unpacked cancel
        st.builds(length_delimited, st.just(2), st.binary(max_size=32)),  # a "response"
        wrong_type((1, 2, 3)),
        unknown_field(),
        over_long_varint(),
        st.binary(max_size=16),
    )


def valid_parts(sender: str) -> st.SearchStrategy[bytes]:
    """Parts that keep a frame parseable: the node must answer, not refuse."""
    return st.one_of(
        st.builds(length_delimited, st.just(1), typed_request(sender)),
        st.builds(length_delimited, st.just(1), typed_request(sender)),
        st.builds(
            length_delimited,
            st.just(3),
            st.lists(U64, max_size=4).map(lambda ids: b"".join(map(varint, ids))),
        ),
        unknown_field(),
    )


def frames(sender: str) -> st.SearchStrategy[bytes]:
    structured = st.lists(frame_parts(sender), max_size=8).map(b"".join)
    return st.one_of(
        st.binary(max_size=2048),  # random bytes
        st.lists(valid_parts(sender), min_size=1, max_size=8).map(b"".join),
        structured,
        structured.flatmap(mutated),  # truncated, flipped, spliced
    )


def mutated(data: bytes) -> st.SearchStrategy[bytes]:
    if not data:
        return st.just(b"\x0a")
    at = st.integers(0, len(data) - 1)
    return st.one_of(
        at.map(lambda i: data[:i]),  # truncated
        st.tuples(at, st.integers(1, 255)).map(
            lambda t: data[: t[0]] + bytes([data[t[0]] ^ t[1]]) + data[t[0] + 1 :]
        ),
        st.tuples(at, st.binary(min_size=1, max_size=8)).map(
            lambda t: data[: t[0]] + t[1] + data[t[0] :]
        ),
    )


# -- one case -------------------------------------------------------------------------------------


#: Requests that may legitimately stay unanswered when a stream ends: asynchronous handlers
#: (cancelled with the stream) and those the client itself cancelled.
_ASYNC = {("t", "slow"), (INTERNAL, "handoff"), (INTERNAL, "leaving")}


def expectations(sent: list[bytes]) -> tuple[int, set[int], grpc.StatusCode | None]:
    """What the node must do with ``sent``.

    Returns:
        how many frames to send (up to the first one the node must refuse: a write after
        the node ended the call would fail on the client and hide the node's status), the
        request ids that must be answered, and the status the call must end with, if any.
    """
    must: set[int] = set()
    maybe_missing: set[int] = set()
    for i, data in enumerate(sent):
        if len(data) > MAX_MESSAGE:
            return i + 1, set(), grpc.StatusCode.RESOURCE_EXHAUSTED  # refused by gRPC itself
        try:
            parsed = pb.Frame.FromString(data)
        except DecodeError:
            return i + 1, must - maybe_missing, grpc.StatusCode.INVALID_ARGUMENT
        maybe_missing.update(parsed.cancels)
        for request in parsed.requests:
            if (request.namespace, request.command) in _ASYNC:
                maybe_missing.add(request.id)
            else:
                must.add(request.id)
    return len(sent), must - maybe_missing, None


async def exchange_case(client: Client, sent: list[bytes], counts: Counter[str]) -> None:
    count, must, failure = expectations(sent)
    call = client.channel.stream_stream(
        EXCHANGE_PATH, request_serializer=None, response_deserializer=None
    )(None, metadata=client.metadata)
    answered: set[int] = set()
    ended = False
    try:
        for data in sent[:count]:
            await call.write(data)
        # Read until every required answer came, or the node ended the stream.
        while not ended and (failure is not None or not must <= answered):
            received = await call.read()
            if received is grpc.aio.EOF:  # type: ignore[attr-defined]
                break
            assert isinstance(received, bytes)
            reply = pb.Frame.FromString(received)
            assert not reply.requests and not reply.cancels
            for response in reply.responses:
                assert int(response.status) in {int(s) for s in Status}
                if response.status != pb.OK:
                    assert response.error, f"status {response.status} without a message"
                answered.add(response.id)
    except grpc.aio.AioRpcError:
        ended = True
    if ended or failure is not None:
        code = await call.code()
        details = await call.details()
        counts[f"exchange ended {code.name}"] += 1
        assert failure is not None, f"a well-formed stream failed: {code.name} {details}"
        assert code == failure, (code, details)
        if failure == grpc.StatusCode.INVALID_ARGUMENT:
            assert "malformed frame" in (details or "")
        return
    call.cancel()
    assert must <= answered, f"unanswered: {sorted(must - answered)[:5]}"
    counts["exchange answered"] += 1


async def transfer_case(client: Client, data: bytes, counts: Counter[str]) -> None:
    call = client.channel.unary_stream(
        TRANSFER_PATH, request_serializer=None, response_deserializer=None
    )(data, metadata=client.metadata)
    try:
        while (chunk := await call.read()) is not grpc.aio.EOF:  # type: ignore[attr-defined]
            assert isinstance(chunk, bytes)
            pb.TransferChunk.FromString(chunk)
        counts["transfer OK"] += 1
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        counts[f"transfer {code.name}"] += 1
        assert code in (
            grpc.StatusCode.INVALID_ARGUMENT,  # malformed request, partition out of range
            grpc.StatusCode.UNIMPLEMENTED,  # no hooks for that namespace
        ), f"{code.name}: {exc.details()}"
        assert exc.details()
    finally:
        call.cancel()


def run_case(client: Client, node: NodeProcess, coro: Any) -> None:
    client.runner.run(asyncio.wait_for(coro, CASE_LIMIT))
    node.counts["cases"] += 1


SETTINGS = settings(
    deadline=None,
    database=None,  # no example database written into the repository
    print_blob=True,  # a failure prints how to reproduce it
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

TRANSFER_REQUESTS = st.one_of(
    st.binary(max_size=256),
    st.builds(
        lambda ns, p, b: pb.TransferRequest(
            namespace=ns, partition=p, buckets=b
        ).SerializeToString(),
        st.sampled_from(["t", "", "nope", INTERNAL]),
        st.integers(0, 2**32 - 1) | st.integers(0, 20),
        st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 63), max_size=8),
    ),
    st.lists(
        st.one_of(
            st.builds(length_delimited, st.just(1), NAMESPACES),
            st.builds(varint_field, st.integers(2, 3), U64),
            st.builds(length_delimited, st.just(3), st.binary(max_size=16)),  # packed buckets
            wrong_type((1, 2, 3)),
            unknown_field(),
            over_long_varint(),
        ),
        max_size=6,
    ).map(b"".join),
)


# -- the tests ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def baseline_rss(node: NodeProcess, client: Client) -> int:
    """Warm the node up (every kind of case, so that its caches and pools are at steady
    state), then return its RSS. Every test asks for it, so the warm-up comes first in
    any order, and a test run alone measures from the same point."""

    @settings(SETTINGS, max_examples=150)
    @given(st.lists(frames(node.sender), min_size=1, max_size=3))
    def warm(sent: list[bytes]) -> None:
        run_case(client, node, exchange_case(client, sent, node.counts))

    warm()
    return node.rss()


def test_fuzzed_exchange_frames(node: NodeProcess, client: Client, baseline_rss: int) -> None:
    @settings(SETTINGS, max_examples=1800 * SCALE)
    @given(st.lists(frames(node.sender), min_size=1, max_size=3))
    def case(sent: list[bytes]) -> None:
        run_case(client, node, exchange_case(client, sent, node.counts))

    case()


def test_fuzzed_transfer_requests(node: NodeProcess, client: Client, baseline_rss: int) -> None:
    @settings(SETTINGS, max_examples=600 * SCALE)
    @given(TRANSFER_REQUESTS)
    def case(data: bytes) -> None:
        run_case(client, node, transfer_case(client, data, node.counts))

    case()


#: Cases the survival test sends itself, so that it measures memory after a real load
#: whether or not the fuzz tests above ran before it (alone, or in a shuffled order).
SURVIVAL_CASES = 600


def test_the_node_survived_with_bounded_memory_and_still_serves(
    node: NodeProcess, client: Client, baseline_rss: int
) -> None:
    before = node.counts["cases"]

    @settings(SETTINGS, max_examples=SURVIVAL_CASES * SCALE)
    @given(st.lists(frames(node.sender), min_size=1, max_size=3) | TRANSFER_REQUESTS)
    def load(case: list[bytes] | bytes) -> None:
        if isinstance(case, bytes):
            run_case(client, node, transfer_case(client, case, node.counts))
        else:
            run_case(client, node, exchange_case(client, case, node.counts))

    load()
    assert node.process.poll() is None, "the node process died"
    growth = node.rss() - baseline_rss
    summary = dict(sorted(node.counts.items()))
    log = node.log.read_text(errors="replace")
    print(
        f"\ngRPC fuzz: {summary}; RSS growth {growth / 2**20:.1f} MiB; "
        f"{len(log.splitlines())} log lines"
    )
    assert node.counts["cases"] - before >= SURVIVAL_CASES * SCALE * 0.9
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew by {growth / 2**20:.1f} MiB"
    # Errors that nobody handled (asyncio's last-resort reports, coroutines created and
    # dropped) would mean a bug, even if the node survived them. Handler failures ("boom")
    # are logged on purpose.
    for sign in ("Task exception was never retrieved", "Exception in callback"):
        assert sign not in log, f"{sign!r} in the node's log {node.log}"
    # A handler's coroutine, internal or application (h_slow), becomes a task at once, so
    # a request whose stream closes before its answer leaves none never awaited.
    dropped = [line for line in log.splitlines() if "never awaited" in line]
    assert not dropped, f"coroutines never awaited in the node's log {node.log}: {dropped}"

    async def normal_requests() -> None:
        transport = GrpcTransport(
            f"127.0.0.1:{free_port('127.0.0.1')}",
            limits=TransportLimits(max_message_bytes=MAX_MESSAGE),
        )

        async def no_transfer(sender: str, request: Any) -> Any:
            yield []

        await transport.start(lambda s, r: None, no_transfer)  # type: ignore[arg-type,return-value]
        try:
            set_ = Request("t", "set", b"after-fuzz", b"value", 0, "", 5.0)
            response = await asyncio.wait_for(transport.request(node.address, set_), 10)
            assert response.status is Status.OK, response
            get = Request("t", "get", b"after-fuzz", b"", 0, "", 5.0)
            response = await asyncio.wait_for(transport.request(node.address, get), 10)
            assert (response.status, response.payload) == (Status.OK, b"value")
        finally:
            await transport.close()

    asyncio.run(normal_requests())
    assert node.process.poll() is None
