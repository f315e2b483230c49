"""The gossip UDP socket closed under a running node (``connection_lost``): the node says so,
binds the same address again and keeps its membership; if it cannot, it stops cleanly."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from peer_ring.discovery.gossip import GossipDiscovery
from peer_ring.discovery.gossip._runtime import REBIND_ATTEMPTS

LOGGER = "peer_ring.discovery.gossip._runtime"


def make(i: int, seeds: list[str], config: Any) -> GossipDiscovery:
    return GossipDiscovery(
        "127.0.0.1:0", seeds, self_address=f"127.0.0.1:{7200 + i}", config=config
    )


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` (a state change of a real-socket node) for at most ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"no {what} within {timeout:.1f} s"
        await asyncio.sleep(0.02)


@pytest.fixture
async def loop_errors() -> list[dict[str, Any]]:
    """Whatever reaches the event loop's exception handler (nothing should)."""
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    return errors


async def test_a_udp_socket_closed_under_the_node_is_logged_and_bound_again(
    fast_config, wait_view, bounds, caplog, loop_errors
) -> None:
    a, b = make(0, [], fast_config), None
    await a.start()
    b = make(1, [a.gossip_address], fast_config)
    await b.start()
    limit = bounds(fast_config, 2)
    both = {"127.0.0.1:7200", "127.0.0.1:7201"}
    try:
        await wait_view(a, lambda v: v == both, limit.join, "view of both")
        runtime = a._runtime
        assert runtime is not None and runtime._udp is not None
        lost = runtime._udp
        port = lost.get_extra_info("sockname")[1]
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            lost.abort()  # as if the socket had been closed by someone else
            await until(lambda: a.stats().get("udp_rebinds") == 1, limit.quiet, "rebind")
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1
        assert "UDP socket of 127.0.0.1:7200" in errors[0].getMessage()
        assert "closed under it" in errors[0].getMessage()
        assert a.stats()["udp_lost"] == 1
        assert runtime._udp is not None and runtime._udp is not lost
        assert runtime._udp.get_extra_info("sockname")[1] == port  # the address others know

        # UDP works again: b's probes (every probe interval, UDP first) reach a and are
        # answered (no TCP rescue needed), and neither view loses the other.
        received = a.stats().get("packets_received", 0)
        more = lambda: a.stats().get("packets_received", 0) > received + 2  # noqa: E731
        await until(more, limit.join, "UDP packets after the rebind")
        assert await wait_view(a, lambda v: v == both, limit.join, "view of both") == both
        assert await wait_view(b, lambda v: v == both, limit.join, "view of both") == both
        assert loop_errors == []
    finally:
        await a.stop()
        await b.stop()
    # The node's own close on stop() is not reported as a loss.
    assert [r for r in caplog.records if r.levelno == logging.ERROR] == errors
    assert loop_errors == []


async def test_a_udp_socket_that_cannot_be_bound_again_stops_the_node_cleanly(
    fast_config, bounds, caplog, loop_errors
) -> None:
    a = make(0, [], fast_config)
    await a.start()
    runtime = a._runtime
    assert runtime is not None and runtime._udp is not None and runtime.swim is not None
    attempts = 0

    async def refuse() -> asyncio.DatagramTransport:
        nonlocal attempts
        attempts += 1
        raise OSError(98, "Address already in use")

    runtime._bind_udp = refuse  # type: ignore[method-assign]
    # The attempts are one probe interval apart: this bounds them, with a loaded margin.
    limit = bounds(fast_config, 1).quiet + REBIND_ATTEMPTS * fast_config.probe_interval
    try:
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            runtime._udp.abort()
            await until(lambda: runtime.swim.stopped, limit, "stop")  # type: ignore[union-attr]
        assert attempts == REBIND_ATTEMPTS
        assert runtime._udp is None
        assert runtime.stats["udp_rebind_failed"] == 1
        messages = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(messages) == 2
        assert "closed under it" in messages[0]
        assert "cannot be bound again" in messages[1] and "Address already in use" in messages[1]
        # The timer loop ended and the TCP listener is closed: nothing runs any more.
        loop_task = runtime._loop_task
        assert loop_task is not None
        await asyncio.wait_for(asyncio.shield(loop_task), limit)
        assert runtime._server is not None and not runtime._server.is_serving()
    finally:
        await a.stop()  # still clean, and idempotent
        await a.stop()
    assert loop_errors == []
