"""The coordinator's side of a read: reconcile the replicas' GET answers, find stale ones.

Replicas that are in sync answer a GET with the *same bytes* (the same record, encoded the
same way), which is the common case. Both steps use that: identical answers are decoded
once and reconciled without a resolver call, and a reply whose bytes equal the winner's is
not stale without being decoded again. Different bytes are decoded and compared by version
as before, so the outcome is that of :func:`~peer_ring.kv._record.reconcile` over every
decoded answer.
"""

from __future__ import annotations

from collections.abc import Sequence

from peer_ring.core import Reply
from peer_ring.kv._record import Record, Resolver, reconcile
from peer_ring.kv._wire import decode_get_response


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
