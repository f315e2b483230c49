"""The hand-encoded request and response parts at every varint boundary (issue 23 round 4
builds the small varints inline): the generated parser must read back exactly what was
encoded, and parts placed back to back must split where they should (exact lengths)."""

from __future__ import annotations

import itertools

import pytest

from peer_ring.core._types import Request, Response, Status
from peer_ring.core.proto import peer_ring_pb2 as pb
from peer_ring.core.transport._codec import request_part, response_part

#: Values on both sides of the 1-, 2- and 3-byte varint limits.
EDGES = [0, 1, 127, 128, 129, 16383, 16384, 16385, 2**21 - 1, 2**21]


@pytest.mark.parametrize("rid", [*EDGES, 2**40, 2**64 - 1])
@pytest.mark.parametrize("size", [0, 1, 120, 127, 128, 16250, 16383, 16384, 70000])
def test_request_and_response_parts_round_trip(rid: int, size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    for key, partition in itertools.product([b"", b"k" * 127, b"k" * 128], [0, 127, 16384]):
        req = Request("kv", "set", key, payload, partition, "", 2.0)
        part = request_part(rid, req, 2.0)
        frame = pb.Frame.FromString(part + part)
        assert len(frame.requests) == 2
        got = frame.requests[1]
        assert (got.id, got.key, got.payload, got.partition) == (rid, key, payload, partition)
        assert (got.namespace, got.command, got.timeout_ms) == ("kv", "set", 2000)
    for status, error in [(Status.OK, ""), (Status.ERROR, "boom"), (Status.OK, "x" * 200)]:
        part = response_part(rid, Response(status, payload, error))
        frame = pb.Frame.FromString(part + part)
        assert len(frame.responses) == 2
        answer = frame.responses[0]
        assert (answer.id, answer.status, answer.payload, answer.error) == (
            rid,
            int(status),
            payload,
            error,
        )


def test_out_of_range_values_are_refused() -> None:
    with pytest.raises(ValueError):
        request_part(-1, Request("kv", "set", b"k", b"v"), 1.0)
    with pytest.raises(ValueError):
        request_part(2**64, Request("kv", "set", b"k", b"v"), 1.0)
    with pytest.raises(ValueError):
        request_part(1, Request("kv", "set", b"k", b"v", partition=2**32), 1.0)
    with pytest.raises(ValueError):
        response_part(-5, Response(Status.OK, b"v"))
    with pytest.raises(TypeError):
        request_part(1, Request("kv", "set", "not bytes", b"v"), 1.0)  # type: ignore[arg-type]
