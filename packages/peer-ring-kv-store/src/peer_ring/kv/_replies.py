"""The coordinator's side of a read: reconcile the replicas' GET answers, find stale ones.

Replicas that are in sync answer a GET with the *same bytes* (the same record, encoded the
same way), which is the common case. Both steps use that: identical answers are decoded
once and reconciled without a resolver call, and a reply whose bytes equal the winner's is
not stale without being decoded again. Different bytes are decoded and compared by version
as before, so the outcome is that of :func:`~peer_ring.kv._record.reconcile` over every
decoded answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from peer_ring.core import Clock, Reply
from peer_ring.kv._record import Record, Resolver, reconcile
from peer_ring.kv._wire import (
    FLAG_ENCODED,
    FLAG_TOMBSTONE,
    GET_RESPONSE_HEAD,
    KNOWN_FLAGS,
    decode_get_response,
    known_node_ids,
)

#: What :func:`agreed_value` returns for an absent, deleted or expired key.
ABSENT: tuple[()] = ()
_unpack_answer = GET_RESPONSE_HEAD.unpack_from
_ANSWER_HEAD_SIZE = GET_RESPONSE_HEAD.size
_INF = math.inf


def agreed_value(replies: Sequence[Reply], clock: Clock) -> tuple[bytes, bool] | tuple[()] | None:
    """``(value, encoded)`` of a read whose successful replies are all the same bytes
    (the common case: replicas in sync), straight from those bytes; :data:`ABSENT` when
    they say the key is absent, deleted or expired at ``clock.time()``.

    ``None`` when this cannot say as cheaply: the answers differ, or they are not a
    well-formed record of a writer id the decoder has already checked. The caller then
    reconciles them (:func:`reconcile_answers`), which gives the same value (one distinct
    answer is its own winner) or raises the decoder's error.
    """
    first: bytes | None = None
    for reply in replies:
        if reply.error is None:
            if first is None:
                first = reply.payload
            elif reply.payload != first:
                return None
    if first is None or first == b"\x00":
        return ABSENT
    size = len(first)
    if size < _ANSWER_HEAD_SIZE:
        return None
    present, flags, _, _, expires, node_len, value_len = _unpack_answer(first)
    node_end = _ANSWER_HEAD_SIZE + node_len
    # decode_get_response's checks (see _wire._read_record), and a writer id it decoded.
    if (
        present != 1
        or node_end + value_len != size
        or flags & ~KNOWN_FLAGS
        or not 0.0 <= expires < _INF  # also true for NaN
        or (flags & FLAG_TOMBSTONE and (value_len or flags & FLAG_ENCODED))
        or first[_ANSWER_HEAD_SIZE:node_end] not in known_node_ids
    ):
        return None
    if flags & FLAG_TOMBSTONE or (expires and expires <= clock.time()):
        return ABSENT  # deleted or expired (Record.is_live)
    return first[node_end:], flags & FLAG_ENCODED != 0


def reconcile_answers(
    key: bytes, payloads: Sequence[bytes], resolver: Resolver | None
) -> tuple[Record | None, bytes | None]:
    """The winning record among GET answers, and its answer's bytes when every answer
    was the same (``None`` otherwise: :func:`stale_nodes` then decodes each reply).

    Raises:
        MalformedPayloadError: an answer does not decode.
        TypeError: ``resolver`` returned something other than a :class:`Record`.
    """
    if not payloads:
        return None, None
    first = payloads[0]
    for payload in payloads:
        if payload != first:
            break
    else:
        # One distinct answer: reconcile() would return it as it is (one version).
        return decode_get_response(first), first
    return reconcile(key, [decode_get_response(p) for p in payloads], resolver), None


def stale_nodes(winner: Record, winner_payload: bytes | None, replies: list[Reply]) -> list[str]:
    """The replicas whose reply holds an older version than ``winner`` (or none, or bytes
    that do not decode): the ones read repair writes ``winner`` to."""
    stale = []
    version = winner.version
    for reply in replies:
        if reply.error is not None:
            continue
        payload = reply.payload
        if payload == winner_payload:
            continue  # the winner's own bytes: the same version
        try:
            record = decode_get_response(payload)
        except ValueError:
            stale.append(reply.node)
            continue
        if record is None or record.version < version:
            stale.append(reply.node)
    return stale
