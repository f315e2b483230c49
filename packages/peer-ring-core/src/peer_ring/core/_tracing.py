"""OpenTelemetry spans around operations and data movement, through the API only.

The library depends on ``opentelemetry-api`` optionally and never on the SDK: without the
API installed, or with no tracer provider configured by the application, nothing is traced
and the operations run exactly as without this module (``PeerRing.execute`` is then
the coordinator's own, see :func:`look`; ``execute_many`` makes one check per call).

Spans:

- ``peer_ring.execute`` / ``peer_ring.execute_many``: one per call, attributes
  ``peer_ring.namespace``, ``peer_ring.command``, ``peer_ring.partition`` (execute) or
  ``peer_ring.keys`` / ``peer_ring.failed_keys`` (execute_many); a quorum failure is
  recorded as the span's exception and error status.
- ``peer_ring.transfer``: one per partition stream pulled from a peer (handoffs, initial
  sync, anti-entropy repairs), with ``peer_ring.peer``, ``peer_ring.partition``,
  ``peer_ring.records`` and ``peer_ring.bytes``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Coroutine
from typing import Any

from peer_ring.core.__about__ import __version__
from peer_ring.core._result import ExecuteResult

try:
    from opentelemetry import trace
except ImportError:  # the optional extra is not installed: tracing is off
    trace = None  # type: ignore[assignment]

_tracer = trace.get_tracer("peer_ring.core", __version__) if trace is not None else None


# Operations between two looks at the global tracer provider while none is configured.
_CHECK_EVERY = 1000
_on = False
_countdown = 0


def enabled() -> bool:
    """True when the OpenTelemetry API is installed and an SDK provider is configured.

    The API's default provider is a proxy that records nothing until the application sets
    one; skipping it keeps the hot path free of no-op spans. Looking the provider up costs
    about 2 us (it reads ``os.environ``), so while none is configured it is looked up on
    the first call and then once every ``_CHECK_EVERY`` calls: a provider set after the
    first operations is picked up within that many operations. Once set, it stays.
    """
    global _countdown
    if _on:
        return True
    if _countdown > 0:
        _countdown -= 1
        return False
    return look()


def look() -> bool:
    """Like :func:`enabled`, but looks the provider up now (while none was found) and
    starts a new ``_CHECK_EVERY`` countdown for :func:`enabled`.

    ``PeerRing`` calls it on start and once every ``_CHECK_EVERY`` of its operations: while
    tracing is off, its ``execute`` is the coordinator's, with no check per operation.
    """
    global _on, _countdown
    if not _on:
        _countdown = _CHECK_EVERY
        _on = trace is not None and not isinstance(
            trace.get_tracer_provider(), trace.ProxyTracerProvider
        )
    return _on


async def execute(
    coro: Coroutine[Any, Any, ExecuteResult], namespace: str, command: str
) -> ExecuteResult:
    """Await ``coro`` (the coordinator's execute) inside a ``peer_ring.execute`` span."""
    assert _tracer is not None
    attributes = {"peer_ring.namespace": namespace, "peer_ring.command": command}
    with _tracer.start_as_current_span("peer_ring.execute", attributes=attributes) as span:
        result = await coro
        span.set_attribute("peer_ring.partition", result.partition)
        span.set_attribute("peer_ring.replicas", len(result.preference_list))
        return result


async def execute_many(
    coro: Coroutine[Any, Any, list[ExecuteResult]], namespace: str, command: str
) -> list[ExecuteResult]:
    """Await ``coro`` (the coordinator's execute_many) inside a ``peer_ring.execute_many`` span."""
    assert _tracer is not None
    attributes = {"peer_ring.namespace": namespace, "peer_ring.command": command}
    with _tracer.start_as_current_span("peer_ring.execute_many", attributes=attributes) as span:
        results = await coro
        span.set_attribute("peer_ring.keys", len(results))
        span.set_attribute("peer_ring.failed_keys", sum(1 for r in results if not r.ok))
        return results


async def transfer(
    chunks: AsyncIterator[list[bytes]], peer: str, namespace: str, partition: int
) -> AsyncIterator[list[bytes]]:
    """Yield ``chunks`` (a partition stream from ``peer``) inside a ``peer_ring.transfer`` span."""
    assert _tracer is not None and trace is not None
    # start_span, not start_as_current_span: a generator may be closed in another context,
    # where detaching a context token it did not attach would fail.
    span = _tracer.start_span(
        "peer_ring.transfer",
        attributes={
            "peer_ring.peer": peer,
            "peer_ring.namespace": namespace,
            "peer_ring.partition": partition,
        },
    )
    records = size = 0
    try:
        async for chunk in chunks:
            records += len(chunk)
            size += sum(len(r) for r in chunk)
            yield chunk
    except BaseException as exc:
        span.record_exception(exc)
        span.set_status(trace.Status(trace.StatusCode.ERROR, str(exc)))
        raise
    finally:
        span.set_attribute("peer_ring.records", records)
        span.set_attribute("peer_ring.bytes", size)
        span.end()
